"""The farmers' web API end to end: the web server on 127.0.0.1 over HTTPS in front of
the real pool and wallet servers (mTLS) on the devnet, sign-in with real Keypair
signatures (SEP-53), the session cookie and its CSRF token, headers, bad input, limits."""

from __future__ import annotations

import base64
import datetime as dt

import grpc
import pytest
from stellar_sdk import Keypair

from farmer_web.app import COOKIE
from kalepool.tls import FARMER_WEB
from kalepool.v1 import common_pb2, pool_pb2
from tests.pool.conftest import PoolStage
from tests.web.conftest import WebStage

KALE = 10_000_000


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_the_pool_view_shows_poolers_and_blocks(web: WebStage) -> None:
    pooler, _ = await web.pool.register_pooler("web-rig", max_farmers=7)
    status, body, _ = await web.call("GET", "/api/pool")
    assert status == 200, body
    [shown] = [p for p in body["poolers"] if p["pooler_id"] == pooler.pooler_id]
    assert shown["name"] == "web-rig"
    assert shown["max_farmers"] == 7
    assert shown["participation"]["blocks"] == 0
    assert shown["participation"]["rewards"] == {"stroops": "0", "kale": "0.0000000"}
    assert isinstance(body["blocks"], list)
    assert body["current_block_index"] >= 0


async def test_the_page_and_every_answer_carry_the_security_headers(web: WebStage) -> None:
    for path in ("/", "/api/pool", "/api/me", "/static/app.js", "/nowhere"):
        _, _, response = await web.call("GET", path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    status, page, response = await web.call("GET", "/")
    assert status == 200 and response.content_type == "text/html"
    # No inline script: the only script is a file of the same origin.
    assert '<script src="/static/app.js" defer></script>' in page
    assert page.count("<script") == 1


async def test_sign_in_shows_only_the_signers_farmers(web: WebStage) -> None:
    pooler, _ = await web.pool.register_pooler("web-farm")
    mine, theirs = Keypair.random(), Keypair.random()
    farmer = await web.pool.funded_farmer(
        pooler.pooler_id, stake_bps=2500, kale=3 * KALE, payout_address=mine.public_key
    )
    other = await web.pool.funded_farmer(pooler.pooler_id, payout_address=theirs.public_key)

    status, body, _ = await web.call("GET", "/api/me")
    assert status == 401 and "sign in" in body["error"]

    session, _ = await web.sign_in(mine)
    status, body, _ = await web.call("GET", "/api/me", session=session)
    assert status == 200, body
    assert body["address"] == mine.public_key
    [shown] = body["farmers"]
    assert shown["farmer_id"] == farmer.farmer_id
    assert shown["status"] == "active"
    assert shown["stake_bps"] == 2500
    assert shown["balance"] == {"stroops": str(3 * KALE), "kale": "3.0000000"}
    assert other.farmer_id not in str(body)


async def test_the_session_cookie_is_httponly_secure_and_strict(web: WebStage) -> None:
    keypair = Keypair.random()
    _, made, _ = await web.call("POST", "/api/session/challenge", {"address": keypair.public_key})
    assert keypair.public_key in made["message"]
    status, body, response = await web.call(
        "POST",
        "/api/session",
        {
            "challenge_id": made["challenge_id"],
            "signature": b64(keypair.sign_message(made["message"])),
        },
    )
    assert status == 200, body
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert body["csrf_token"] and body["csrf_token"] != cookie.value
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_wrong_signer_is_refused(web: WebStage) -> None:
    owner, thief = Keypair.random(), Keypair.random()
    _, made, _ = await web.call("POST", "/api/session/challenge", {"address": owner.public_key})
    status, body, response = await web.call(
        "POST",
        "/api/session",
        {
            "challenge_id": made["challenge_id"],
            "signature": b64(thief.sign_message(made["message"])),
        },
    )
    assert status == 401
    assert body["error"] == f"the signature is not {owner.public_key}'s signature of the challenge"
    assert COOKIE not in response.cookies
    assert web.server.state.sign_in.open_sessions == 0
    # A plain ed25519 signature of the text (not SEP-53's hash of the prefixed message)
    # is not the signed message either.
    _, made, _ = await web.call("POST", "/api/session/challenge", {"address": owner.public_key})
    status, body, _ = await web.call(
        "POST",
        "/api/session",
        {
            "challenge_id": made["challenge_id"],
            "signature": b64(owner.sign(made["message"].encode())),
        },
    )
    assert status == 401


async def test_a_replayed_answer_is_refused(web: WebStage) -> None:
    keypair = Keypair.random()
    _, made, _ = await web.call("POST", "/api/session/challenge", {"address": keypair.public_key})
    answer = {
        "challenge_id": made["challenge_id"],
        "signature": b64(keypair.sign_message(made["message"])),
    }
    first, _, _ = await web.call("POST", "/api/session", answer)
    assert first == 200
    status, body, _ = await web.call("POST", "/api/session", answer)
    assert status == 401
    assert body["error"] == "unknown or already used challenge; ask for a new one"
    assert web.server.state.sign_in.open_sessions == 1


async def test_an_expired_challenge_is_refused(web: WebStage) -> None:
    keypair = Keypair.random()
    _, made, _ = await web.call("POST", "/api/session/challenge", {"address": keypair.public_key})
    sign_in = web.server.state.sign_in
    real_clock = sign_in.clock
    # The server's clock moved past the challenge's expiry (no sleeping through it).
    sign_in.clock = lambda: real_clock() + dt.timedelta(seconds=sign_in.challenge_seconds + 1)
    status, body, _ = await web.call(
        "POST",
        "/api/session",
        {
            "challenge_id": made["challenge_id"],
            "signature": b64(keypair.sign_message(made["message"])),
        },
    )
    assert status == 401
    assert body["error"] == "the challenge has expired; ask for a new one"
    assert sign_in.open_sessions == 0


async def test_a_change_needs_the_sessions_csrf_token(web: WebStage) -> None:
    keypair = Keypair.random()
    session, csrf = await web.sign_in(keypair)
    status, body, _ = await web.call("DELETE", "/api/session", session=session)
    assert status == 403 and "X-CSRF-Token" in body["error"]
    status, body, _ = await web.call("DELETE", "/api/session", session=session, csrf="x" * 43)
    assert status == 403
    # Another session's token does not do either.
    other_session, other_csrf = await web.sign_in(Keypair.random())
    status, _, _ = await web.call("DELETE", "/api/session", session=session, csrf=other_csrf)
    assert status == 403
    status, _, _ = await web.call("GET", "/api/me", session=session)
    assert status == 200  # still signed in: nothing changed
    status, body, _ = await web.call("DELETE", "/api/session", session=session, csrf=csrf)
    assert status == 200, body
    status, _, _ = await web.call("GET", "/api/me", session=session)
    assert status == 401
    status, _, _ = await web.call("DELETE", "/api/session", csrf=other_csrf)
    assert status == 401  # no cookie: no session, whatever the header says
    assert other_session


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/session/challenge", {"address": "nope"}, "address must be a Stellar account"),
        (
            "/api/session/challenge",
            {"address": "S" + "A" * 55},
            "address must be a Stellar account",
        ),
        ("/api/session/challenge", {}, "address is required"),
        ("/api/session/challenge", {"address": 7}, "address must be a non-empty str"),
        ("/api/session/challenge", {"address": "G", "admin": True}, "unknown field 'admin'"),
        ("/api/session/challenge", ["G"], "body must be a JSON object"),
        ("/api/session", {"challenge_id": "x", "signature": "!!"}, "signature must be base64"),
        ("/api/session", {"challenge_id": "x", "signature": b64(b"short")}, "must be 64 bytes"),
        ("/api/session", {"challenge_id": "x"}, "signature is required"),
    ],
)
async def test_bad_input_is_400_with_a_clear_error_and_changes_nothing(
    web: WebStage, path: str, body: object, message: str
) -> None:
    before = await web.pool.counts()
    status, answer, response = await web.call("POST", path, body)
    assert status == 400, answer
    assert response.content_type == "application/json"
    assert message in answer["error"]
    state = web.server.state.sign_in
    assert (state.open_challenges, state.open_sessions) == (0, 0)
    assert await web.pool.counts() == before


async def test_a_body_that_is_not_json_is_refused(web: WebStage) -> None:
    status, body, _ = await web.call(
        "POST",
        "/api/session/challenge",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["error"]) == (400, "body is not valid JSON")
    status, body, _ = await web.call(
        "POST", "/api/session/challenge", data=b"address=G", headers={"Content-Type": "text/plain"}
    )
    assert status == 400 and "application/json" in body["error"]
    status, body, _ = await web.call(
        "POST",
        "/api/session/challenge",
        data=b"x" * 10_000,
        headers={"Content-Type": "application/json"},
    )
    assert status == 413 and body["error"]
    assert web.server.state.sign_in.open_challenges == 0


@pytest.mark.parametrize("web", [{"per_ip": 3}], indirect=True)
async def test_an_ip_over_its_limit_gets_429(web: WebStage) -> None:
    for _ in range(3):
        status, _, _ = await web.call("GET", "/api/openapi.json")
        assert status == 200
    status, body, response = await web.call("GET", "/api/pool")
    assert status == 429
    assert "too many requests" in body["error"]
    assert response.headers["Retry-After"] == "60"


@pytest.mark.parametrize("web", [{"per_address": 2}], indirect=True)
async def test_an_address_over_its_sign_in_limit_gets_429(web: WebStage) -> None:
    keypair = Keypair.random()
    for _ in range(2):
        status, _, _ = await web.call(
            "POST", "/api/session/challenge", {"address": keypair.public_key}
        )
        assert status == 200
    status, body, _ = await web.call(
        "POST", "/api/session/challenge", {"address": keypair.public_key}
    )
    assert status == 429 and keypair.public_key in body["error"]
    assert web.server.state.sign_in.open_challenges == 2
    # Another address is not held back by it.
    status, _, _ = await web.call(
        "POST", "/api/session/challenge", {"address": Keypair.random().public_key}
    )
    assert status == 200


async def test_farmer_web_may_call_only_its_rpcs(pool: PoolStage) -> None:
    """Reads and the signed farmer actions only (tests/pool/test_farmer_actions.py: the
    actions need the farmer's signature); nothing of an operator's."""
    stub = pool.operator(FARMER_WEB)
    listed = await stub.ListPoolers(pool_pb2.ListPoolersRequest())
    assert listed is not None
    for call, request in (
        (stub.RegisterPooler, pool_pb2.RegisterPoolerRequest()),
        (stub.RotatePoolerApiKey, pool_pb2.RotatePoolerApiKeyRequest()),
        (stub.ListCompensations, pool_pb2.ListCompensationsRequest()),
        (stub.NewFarmerPayoutChallenge, pool_pb2.NewFarmerPayoutChallengeRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'farmer-web' may not call kalepool.v1.PoolService." in (
            refused.value.details() or ""
        )


async def test_list_farmers_filters_by_payout_address(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler("filter-rig")
    payout = Keypair.random().public_key
    op = pool.operator()
    made = await op.RegisterFarmer(
        pool_pb2.RegisterFarmerRequest(pooler_id=pooler.pooler_id, payout_address=payout)
    )
    await op.RegisterFarmer(
        pool_pb2.RegisterFarmerRequest(
            pooler_id=pooler.pooler_id, payout_address=Keypair.random().public_key
        )
    )
    listed = await op.ListFarmers(pool_pb2.ListFarmersRequest(payout_address=payout))
    assert [f.farmer_id for f in listed.farmers] == [made.farmer.farmer_id]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await op.ListFarmers(
            pool_pb2.ListFarmersRequest(
                payout_address="nope", status=common_pb2.FARMER_STATUS_ACTIVE
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payout_address must be a Stellar" in (refused.value.details() or "")
