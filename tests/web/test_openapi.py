"""The OpenAPI document kept in the repository describes exactly the API's routes, and
the in-process pieces (buckets, challenges) behave on their own."""

from __future__ import annotations

import datetime as dt
import json

from stellar_sdk import Keypair

from farmer_web.app import OPENAPI, WebState, make_app
from farmer_web.buckets import Buckets
from farmer_web.sessions import SignIn


def _routes() -> set[tuple[str, str]]:
    state = WebState(
        pool=None,
        sign_in=SignIn(60, 60),
        per_ip=Buckets(1),
        per_address=Buckets(1),
        session_seconds=60,
    )  # type: ignore[arg-type]
    app = make_app(state)
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and route.method != "HEAD":
            routes.add((route.method.lower(), path))
    return routes


def test_the_openapi_document_matches_the_routes() -> None:
    doc = json.loads(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.")
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == _routes()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert any(code.startswith("2") for code in operation["responses"]), f"{method} {path}"


def test_a_bucket_refills_with_time() -> None:
    now = [0.0]
    bucket = Buckets(2, clock=lambda: now[0])
    assert bucket.take("a") and bucket.take("a")
    assert not bucket.take("a")
    assert bucket.take("b")
    now[0] = 30.0  # half a minute: one token back
    assert bucket.take("a")
    assert not bucket.take("a")


def test_a_bucket_keeps_only_the_most_recent_keys() -> None:
    bucket = Buckets(1, max_keys=2)
    assert bucket.take("a")
    bucket.take("b")
    bucket.take("c")  # "a" is forgotten: memory stays bounded
    assert bucket.take("a")


def test_a_challenge_names_its_address_and_expiry() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sign_in = SignIn(300, 3600, clock=lambda: now)
    keypair = Keypair.random()
    made = sign_in.challenge(keypair.public_key)
    assert f"address: {keypair.public_key}" in made.message
    assert "expires: 2026-01-01T00:05:00+00:00" in made.message
    session = sign_in.answer(made.challenge_id, keypair.sign_message(made.message))
    assert session.address == keypair.public_key
    assert sign_in.session(session.session_id) == session
