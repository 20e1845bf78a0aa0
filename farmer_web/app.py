"""The web API and page over HTTPS (aiohttp): routes, input checks, sign-in, the
security headers, rate limits and JSON errors.

Every answer carries the security headers (a CSP with `default-src 'self'` and no
inline script, `frame-ancestors 'none'`, nosniff, no referrer, HSTS). Every /api
request takes a token from its IP's bucket; challenges and answers one from their
address's bucket too (429 when spent). Bad input is 400 with `{"error": "..."}` naming
the field, before anything is kept or asked of the pool. A state-changing request
(POST, PUT, PATCH, DELETE) on a signed-in route needs the session cookie and the
session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from farmer_web.buckets import Buckets
from farmer_web.pool import PoolReader
from farmer_web.sessions import Session, SignIn, SignInError, csrf_matches, decode_signature
from kalepool.bounds import cut
from kalepool.grpc_server import StatusError
from kalepool.request_checks import check_account
from kalepool.tls import CertificateFiles

log = logging.getLogger("farmer_web")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.json"

COOKIE = "kp_session"
CSRF_HEADER = "X-CSRF-Token"
BODY_MAX = 4096
"""Bytes of a request body: every request here is a few short fields."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes that change state before anyone is signed in: the sign-in itself (the
# signature is the proof; no cookie is read).
_NO_SESSION = frozenset({("POST", "/api/session/challenge"), ("POST", "/api/session")})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    """A JSON error a person can read: `{"error": "..."}`."""
    return web.json_response({"error": cut(message)}, status=status)


@dataclass
class WebState:
    """What the handlers share."""

    pool: PoolReader
    sign_in: SignIn
    per_ip: Buckets
    per_address: Buckets
    session_seconds: int


STATE = web.AppKey("state", WebState)
_SESSION = web.RequestKey("session", Session)
"""Where the sessions middleware leaves the caller's session on the request."""


async def _body(request: web.Request, fields: dict[str, type]) -> dict[str, Any]:
    """The request's JSON object holding exactly `fields` (each of its type), or 400."""
    if request.content_type != "application/json":
        raise web.HTTPBadRequest(reason="body must be JSON (Content-Type: application/json)")
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise web.HTTPBadRequest(reason=f"unknown field {unknown[0][:40]!r}")
    for name, kind in fields.items():
        if name not in data:
            raise web.HTTPBadRequest(reason=f"{name} is required")
        value = data[name]
        if not isinstance(value, kind) or (isinstance(value, str) and not value):
            raise web.HTTPBadRequest(reason=f"{name} must be a non-empty {kind.__name__}")
        if isinstance(value, str) and (len(value) > 1000 or "\x00" in value):
            raise web.HTTPBadRequest(reason=f"{name} is too long or holds NUL")
    return data


def _address(value: str) -> str:
    """A payout address checked by the gRPC edge's own rule (400 otherwise)."""
    try:
        return check_account("address", value)
    except StatusError as exc:
        raise web.HTTPBadRequest(reason=exc.message) from None


def _limit_address(state: WebState, address: str) -> None:
    if not state.per_address.take(address):
        raise web.HTTPTooManyRequests(
            reason=f"too many sign-in attempts for {address}; wait a minute",
            headers={"Retry-After": "60"},
        )


def _session(request: web.Request) -> Session:
    """The caller's live session, or 401."""
    found: Session | None = request.get(_SESSION)
    if found is not None:
        return found
    raise web.HTTPUnauthorized(reason="sign in first (POST /api/session)")


# --- middlewares -----------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors of /api as JSON, the pool's refusals mapped to HTTP, nothing internal shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        response = error(exc.status, exc.reason)
        if "Retry-After" in exc.headers:
            response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return error(400, exc.details() or "invalid input")
        if code == grpc.StatusCode.NOT_FOUND:
            return error(404, exc.details() or "not found")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return error(503, "the pool is busy; try again in a minute")
        log.warning("pool call failed: %s", code.name)
        return error(503, "the pool cannot be reached now; try again later")


@web.middleware
async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each /api request takes a token from its client IP's bucket (the peer address:
    no proxy header is trusted)."""
    if request.path.startswith("/api/"):
        state = request.app[STATE]
        if not state.per_ip.take(request.remote or "-"):
            raise web.HTTPTooManyRequests(
                reason="too many requests from your address; wait a minute",
                headers={"Retry-After": "60"},
            )
    return await handler(request)


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Finds the session of the cookie, and refuses a state-changing request on a
    signed-in route without its CSRF token (403)."""
    state = request.app[STATE]
    cookie = request.cookies.get(COOKIE, "")
    found = state.sign_in.session(cookie) if cookie and len(cookie) <= 100 else None
    if found is not None:
        request[_SESSION] = found
    if request.method in _MUTATING and (request.method, request.path) not in _NO_SESSION:
        if found is None:
            raise web.HTTPUnauthorized(reason="sign in first (POST /api/session)")
        if not csrf_matches(found, request.headers.get(CSRF_HEADER, "")):
            raise web.HTTPForbidden(reason=f"the {CSRF_HEADER} header of your session is missing")
    return await handler(request)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"


# --- handlers --------------------------------------------------------------------------


async def get_pool(request: web.Request) -> web.Response:
    """The public pool view."""
    return web.json_response(await request.app[STATE].pool.pool_view())


async def post_challenge(request: web.Request) -> web.Response:
    """A challenge for the payout address to sign."""
    state = request.app[STATE]
    data = await _body(request, {"address": str})
    address = _address(data["address"])
    _limit_address(state, address)
    made = state.sign_in.challenge(address)
    return web.json_response(
        {
            "challenge_id": made.challenge_id,
            "address": made.address,
            "message": made.message,
            "expires_at": made.expires_at.isoformat(),
        }
    )


async def post_session(request: web.Request) -> web.Response:
    """The signed challenge: a session cookie and its CSRF token."""
    state = request.app[STATE]
    data = await _body(request, {"challenge_id": str, "signature": str})
    address = state.sign_in.address_of(data["challenge_id"])
    if address is not None:
        _limit_address(state, address)
    try:
        signature = decode_signature(data["signature"])
    except SignInError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    try:
        session = state.sign_in.answer(data["challenge_id"], signature)
    except SignInError as exc:
        raise web.HTTPUnauthorized(reason=str(exc)) from None
    response = web.json_response(
        {
            "address": session.address,
            "csrf_token": session.csrf_token,
            "expires_at": session.expires_at.isoformat(),
        }
    )
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=state.session_seconds,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    return response


async def delete_session(request: web.Request) -> web.Response:
    """Sign out (the CSRF token is required, as for every change)."""
    session = _session(request)
    request.app[STATE].sign_in.end(session.session_id)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


async def get_me(request: web.Request) -> web.Response:
    """The signed-in address's farmers: balance, stake and status."""
    session = _session(request)
    farmers = await request.app[STATE].pool.farmers_of(session.address)
    return web.json_response({"address": session.address, "farmers": farmers})


async def get_openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/json"})


async def get_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def make_app(state: WebState) -> web.Application:
    """The application: API routes, the page and its static files."""
    app = web.Application(middlewares=[json_errors, limits, sessions], client_max_size=BODY_MAX)
    app[STATE] = state
    app.on_response_prepare.append(_headers)
    app.router.add_get("/api/pool", get_pool)
    app.router.add_post("/api/session/challenge", post_challenge)
    app.router.add_post("/api/session", post_session)
    app.router.add_delete("/api/session", delete_session)
    app.router.add_get("/api/me", get_me)
    app.router.add_get("/api/openapi.json", get_openapi)
    app.router.add_get("/", get_index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, show_index=False)
    return app


# --- serving ---------------------------------------------------------------------------


@dataclass
class WebServer:
    """A running web server."""

    runner: web.AppRunner
    state: WebState
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.state.pool.close()


def server_ssl(certs: CertificateFiles, name: str) -> ssl.SSLContext:
    """TLS of the web server: the certificate `name` from the certificates' directory."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert, key = certs.paths(name)
    context.load_cert_chain(cert, key)
    return context


async def start_web_server(
    *,
    host: str,
    port: int,
    certs: CertificateFiles,
    server_name: str,
    pool: PoolReader,
    sign_in: SignIn,
    per_ip_per_minute: int,
    per_address_per_minute: int,
) -> WebServer:
    """Serve the page and its API over HTTPS on host:port (0: a free port)."""
    state = WebState(
        pool=pool,
        sign_in=sign_in,
        per_ip=Buckets(per_ip_per_minute),
        per_address=Buckets(per_address_per_minute),
        session_seconds=sign_in.session_seconds,
    )
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=server_ssl(certs, server_name))
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("farmers' web page on https://%s:%d/", host, bound)
    return WebServer(runner, state, bound)
