"""The web API and page over HTTPS (aiohttp): routes, input checks, sign-in, the
farmer's own pages (funding, history, ledger, payouts) and signed actions (join, payout,
leave), the security headers, rate limits and JSON errors.

Trust rule: this process cannot register anyone or move anyone's KALE by itself. A join,
payout or leave is offered as an action message (`kalepool.farmer_actions`) for the
farmer's wallet to sign, and forwarded with that signature; the pool verifies it (the
payout address's key, the fields, the expiry, a nonce used once) and refuses the action
otherwise. A signed-in farmer sees only farmers paying out to its own address: any other
farmer id is 404, as an unknown one is.

Every answer carries the security headers (a CSP with `default-src 'self'` and no
inline script, `frame-ancestors 'none'`, nosniff, no referrer, HSTS). Every /api
request takes a token from its IP's bucket; challenges and answers one from their
address's bucket too (429 when spent). Bad input is 400 with `{"error": "..."}` naming
the field, before anything is kept or asked of the pool. A state-changing request
(POST, PUT, PATCH, DELETE) on a signed-in route needs the session cookie and the
session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import segno
from aiohttp import web

from farmer_web.actions import ActionChallenges, Offered
from farmer_web.buckets import Buckets
from farmer_web.pool import PoolReader, Signed, amount, farmer_status, payout_view
from farmer_web.sessions import Session, SignIn, SignInError, csrf_matches, decode_signature
from kalepool import farmer_actions
from kalepool.amounts import MIN_FUNDING_XLM_STROOPS, exact_kale
from kalepool.bounds import INT64_MAX, PAGE_SIZE_MAX, STAKE_BPS_MAX, cut
from kalepool.farmer_actions import Action
from kalepool.grpc_server import StatusError
from kalepool.request_checks import check_account, check_uuid
from kalepool.tls import CertificateFiles
from kalepool.v1 import pool_pb2

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
# A join opens the session itself (the signed join is the proof of the payout key).
_NO_SESSION = frozenset(
    {
        ("POST", "/api/session/challenge"),
        ("POST", "/api/session"),
        ("POST", "/api/join/challenge"),
        ("POST", "/api/join"),
    }
)
DEFAULT_ROWS = 50
"""Rows of history, ledger and payouts when `limit` is not given."""
CONFIRM_SECONDS = 5.0
"""A pending farmer's ConfirmFunding is asked of the pool at most this often, however
often the page polls."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    """A JSON error a person can read: `{"error": "..."}`."""
    return web.json_response({"error": cut(message)}, status=status)


class ConfirmThrottle:
    """When each pending farmer's funding was last confirmed with the pool: the page
    polls its farmer, and the pool's ConfirmFunding (a chain read, maybe a trustline) is
    asked at most once every `seconds` per farmer."""

    def __init__(self, seconds: float = CONFIRM_SECONDS, max_keys: int = 100_000) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()

    def due(self, farmer_id: str) -> bool:
        """Whether to confirm now (and, if so, it counts as done now)."""
        now = time.monotonic()
        last = self._last.get(farmer_id)
        if last is not None and now - last < self.seconds:
            return False
        self._last.pop(farmer_id, None)
        self._last[farmer_id] = now
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


@dataclass
class WebState:
    """What the handlers share."""

    pool: PoolReader
    sign_in: SignIn
    per_ip: Buckets
    per_address: Buckets
    session_seconds: int
    actions: ActionChallenges = field(default_factory=ActionChallenges)
    confirms: ConfirmThrottle = field(default_factory=lambda: ConfirmThrottle())


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


def _limit_address(state: WebState, address: str, what: str = "sign-in attempts") -> None:
    if not state.per_address.take(address):
        raise web.HTTPTooManyRequests(
            reason=f"too many {what} for {address}; wait a minute",
            headers={"Retry-After": "60"},
        )


def _session(request: web.Request) -> Session:
    """The caller's live session, or 401."""
    found: Session | None = request.get(_SESSION)
    if found is not None:
        return found
    raise web.HTTPUnauthorized(reason="sign in first (POST /api/session)")


# --- middlewares -----------------------------------------------------------------------


_SIGNATURE_REFUSALS = ("farmer_signature", "a join", "a payout", "a leave")


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
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
            return error(409, exc.details() or "not possible now")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            # The pool's refusal of a farmer's signed action says why in words; any
            # other refusal would name the pool's internals.
            details = exc.details() or ""
            if details.startswith(_SIGNATURE_REFUSALS):
                return error(403, details)
            log.warning("pool refused the web page: %s", details)
            return error(403, "the pool refused this request")
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
    _set_cookie(response, state, session)
    return response


def _set_cookie(response: web.Response, state: WebState, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=state.session_seconds,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


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


# --- joining --------------------------------------------------------------------------


def _offered(offered: Offered) -> web.Response:
    return web.json_response(
        {
            "challenge_id": offered.challenge_id,
            "message": offered.message,
            "expires_at": offered.action.expires.isoformat(),
        }
    )


def _int_field(name: str, value: object, low: int, high: int) -> int:
    """A whole number field (JSON number, or decimal string for amounts past 2^53)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number from {low} to {high}")
    return value


def _uuid(name: str, value: str) -> str:
    try:
        return str(check_uuid(name, value))
    except StatusError as exc:
        raise web.HTTPBadRequest(reason=exc.message) from None


async def post_join_challenge(request: web.Request) -> web.Response:
    """A join action for the payout key to sign: this pooler, this stake."""
    state = request.app[STATE]
    data = await _body(request, {"payout_address": str, "pooler_id": str, "stake_bps": object})
    address = _address(data["payout_address"])
    pooler_id = _uuid("pooler_id", data["pooler_id"])
    bps = _int_field("stake_bps", data["stake_bps"], 0, STAKE_BPS_MAX)
    _limit_address(state, address, "requests")
    action = farmer_actions.build(
        "join",
        pool=await state.pool.pool_name(),
        payout_address=address,
        pooler_id=pooler_id,
        stake_bps=bps,
        seconds=state.sign_in.challenge_seconds,
    )
    return _offered(state.actions.offer(action))


async def _signed(request: web.Request, action: Action) -> tuple[Offered, Signed]:
    """The signed answer to an open `action` challenge (used up whatever follows)."""
    state = request.app[STATE]
    data = await _body(request, {"challenge_id": str, "signature": str})
    found = state.actions.peek(data["challenge_id"])
    if found is not None:
        _limit_address(state, found.action.payout_address, "requests")
    try:
        signature = decode_signature(data["signature"])
    except SignInError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    offered = state.actions.take(data["challenge_id"])
    if offered is None or offered.action.action != action:
        raise web.HTTPBadRequest(
            reason=f"unknown or already used {action} challenge; ask for a new one"
        )
    return offered, Signed(offered.message, signature, offered.action.nonce)


async def post_join(request: web.Request) -> web.Response:
    """The signed join: the pool registers the farmer (it checks the signature), and a
    session opens for the payout address its key has just proven."""
    state = request.app[STATE]
    offered, signed = await _signed(request, "join")
    action = offered.action
    assert action.pooler_id is not None and action.stake_bps is not None
    made = await state.pool.register(
        action.pooler_id, action.payout_address, action.stake_bps, signed
    )
    session = state.sign_in.open(action.payout_address)
    view = await _farmer_view(state, made.farmer)
    response = web.json_response(
        {
            "farmer_id": made.farmer.farmer_id,
            "custodial_address": made.custodial_address,
            "status": view["status"],
            "funding": view["funding"],
            "address": session.address,
            "csrf_token": session.csrf_token,
            "expires_at": session.expires_at.isoformat(),
        },
        status=201,
    )
    _set_cookie(response, state, session)
    return response


# --- one farmer ---------------------------------------------------------------------------


async def _owned(request: web.Request) -> tuple[Session, pool_pb2.Farmer]:
    """The signed-in farmer's farmer of the path's id; 404 for anyone else's."""
    session = _session(request)
    farmer_id = _uuid("farmer id", request.match_info["farmer_id"])
    farmer = await request.app[STATE].pool.farmer(farmer_id)
    if farmer is None or farmer.payout_address != session.address:
        raise web.HTTPNotFound(reason=f"you have no farmer {farmer_id}")
    return session, farmer


def _xlm(stroops: int) -> dict[str, str]:
    return {"stroops": str(stroops), "xlm": exact_kale(stroops)}


def _next_step(status: str, farmer: pool_pb2.Farmer, exists: bool, detail: str) -> str:
    """What the farmer has to do (or wait for) now, in one sentence."""
    custodial = farmer.custodial_address
    if status == "pending_funding":
        if not exists:
            return (
                f"Send at least {exact_kale(MIN_FUNDING_XLM_STROOPS)} XLM to {custodial}"
                " (the QR code holds it); this page notices it by itself."
            )
        return detail or "The XLM arrived; the pool is adding the KALE trustline."
    if status == "active":
        return (
            f"Your farmer is active: send KALE to {custodial}; each block it stakes"
            f" {farmer.stake_bps / 100:g} % of its balance."
        )
    if status == "leaving":
        return (
            "Your farmer is leaving: once its last pails are harvested, its KALE and XLM"
            f" go to {farmer.payout_address}."
        )
    return "Your farmer has left the pool; its account is closed."


async def _farmer_view(state: WebState, farmer: pool_pb2.Farmer) -> dict[str, Any]:
    """The farmer with its balance and funding state; a pending farmer whose account
    exists is confirmed with the pool first (at most every CONFIRM_SECONDS)."""
    farmer_id = farmer.farmer_id
    balance = await state.pool.balance(farmer_id)
    account = balance.account if balance.HasField("account") else None
    detail = ""
    if (
        farmer_status(farmer) == "pending_funding"
        and account is not None
        and account.exists
        and state.confirms.due(farmer_id)
    ):
        try:
            confirmed = await state.pool.confirm_funding(farmer_id)
        except grpc.aio.AioRpcError as exc:  # the view stands without it; next poll retries
            log.warning("confirm funding of %s failed: %s", farmer_id, exc.code().name)
        else:
            farmer, detail = confirmed.farmer, confirmed.detail
            if confirmed.HasField("account"):
                account = confirmed.account
    status = farmer_status(farmer)
    exists = account is not None and account.exists
    return {
        "farmer_id": farmer_id,
        "status": status,
        "pooler_id": farmer.pooler_id,
        "stake_bps": farmer.stake_bps,
        "custodial_address": farmer.custodial_address,
        "payout_address": farmer.payout_address,
        "balance": amount(balance.balance_stroops),
        "available": amount(balance.available_stroops),
        "staked": amount(balance.staked_stroops),
        "rewards": amount(balance.total_reward_stroops),
        "paid_out": amount(balance.total_paid_out_stroops),
        "funding": {
            "status": status,
            "account_exists": exists,
            "xlm_balance": _xlm(account.xlm_balance_stroops if account else 0),
            "min_funding_xlm": _xlm(MIN_FUNDING_XLM_STROOPS),
            "trustline": bool(account and account.kale_trustline),
            "kale_deposited": amount(account.kale_balance_stroops if account else 0),
            "next_step": _next_step(status, farmer, exists, detail),
        },
    }


async def get_farmer(request: web.Request) -> web.Response:
    """The farmer: balance, stake, status and funding (the page polls this)."""
    _, farmer = await _owned(request)
    return web.json_response(await _farmer_view(request.app[STATE], farmer))


def pay_uri(address: str) -> str:
    """What the QR code holds: a SEP-7 payment request to the custodial account."""
    return f"web+stellar:pay?destination={address}"


async def get_qr(request: web.Request) -> web.Response:
    """The custodial address as a QR code (SVG) for a wallet's camera."""
    _, farmer = await _owned(request)
    # A standalone SVG document (with its namespace): the page shows it in an <img>,
    # which renders nothing of an inline fragment without one.
    out = io.BytesIO()
    segno.make(pay_uri(farmer.custodial_address), error="m").save(
        out, kind="svg", scale=4, dark="#000", light="#fff", xmldecl=False
    )
    return web.Response(body=out.getvalue(), content_type="image/svg+xml")


def _rows(request: web.Request) -> int:
    """The `limit` query parameter: 1 to PAGE_SIZE_MAX (DEFAULT_ROWS when absent)."""
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_ROWS
    return _int_field("limit", text, 1, PAGE_SIZE_MAX)


async def get_history(request: web.Request) -> web.Response:
    """The farmer's blocks, newest first: planted, worked, harvested and the amounts."""
    _, farmer = await _owned(request)
    blocks = await request.app[STATE].pool.blocks(farmer.farmer_id, _rows(request))
    return web.json_response({"blocks": blocks})


CSV_COLUMNS = (
    "block",
    "planted",
    "stake_kale",
    "worked",
    "zeros",
    "harvested",
    "reward_kale",
    "compensation_kale",
    "fees_kale",
    "failure",
)


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def get_history_csv(request: web.Request) -> web.Response:
    """The same rows as /history, as a CSV download."""
    _, farmer = await _owned(request)
    blocks = await request.app[STATE].pool.blocks(farmer.farmer_id, _rows(request))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for b in blocks:
        writer.writerow(
            [
                b["block"],
                str(b["planted"]).lower(),
                b["stake"]["kale"],
                str(b["worked"]).lower(),
                b["zeros"],
                str(b["harvested"]).lower(),
                b["reward"]["kale"],
                b["compensation"]["kale"],
                b["fees"]["kale"],
                _cell(b["failure"] or ""),
            ]
        )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={
            "Content-Disposition": (
                f'attachment; filename="kale-farmer-{farmer.farmer_id}-history.csv"'
            )
        },
    )


async def get_ledger(request: web.Request) -> web.Response:
    """The farmer's ledger entries, newest first."""
    _, farmer = await _owned(request)
    entries = await request.app[STATE].pool.ledger(farmer.farmer_id, _rows(request))
    return web.json_response({"entries": entries})


async def get_payouts(request: web.Request) -> web.Response:
    """The farmer's payouts, newest first (a JSON array)."""
    _, farmer = await _owned(request)
    return web.json_response(
        await request.app[STATE].pool.payouts(farmer.farmer_id, _rows(request))
    )


# --- payouts and leaving: signed actions ---------------------------------------------


async def post_payout_challenge(request: web.Request) -> web.Response:
    """A payout action of `amount_stroops` for the payout key to sign."""
    state = request.app[STATE]
    session, farmer = await _owned(request)
    data = await _body(request, {"amount_stroops": object})
    stroops = _int_field("amount_stroops", data["amount_stroops"], 1, INT64_MAX)
    _limit_address(state, session.address, "requests")
    available = (await state.pool.balance(farmer.farmer_id)).available_stroops
    if stroops > available:
        raise web.HTTPConflict(
            reason=f"you can take out at most {exact_kale(available)} KALE now"
            f" (asked for {exact_kale(stroops)})"
        )
    return _offered(state.actions.offer(await _action(state, "payout", farmer, stroops)))


async def _action(
    state: WebState, action: Action, farmer: pool_pb2.Farmer, stroops: int | None = None
) -> farmer_actions.FarmerAction:
    return farmer_actions.build(
        action,
        pool=await state.pool.pool_name(),
        farmer=farmer.farmer_id,
        payout_address=farmer.payout_address,
        amount_stroops=stroops,
        seconds=state.sign_in.challenge_seconds,
    )


def _same_farmer(offered: Offered, farmer: pool_pb2.Farmer) -> None:
    if offered.action.farmer != farmer.farmer_id:
        raise web.HTTPBadRequest(reason="this challenge is for another farmer; ask for a new one")


async def post_payout(request: web.Request) -> web.Response:
    """The signed payout: forwarded to the pool, which checks the signature."""
    state = request.app[STATE]
    _, farmer = await _owned(request)
    offered, signed = await _signed(request, "payout")
    _same_farmer(offered, farmer)
    assert offered.action.amount_stroops is not None
    made = await state.pool.request_payout(farmer.farmer_id, offered.action.amount_stroops, signed)
    view = payout_view(made.payout)
    return web.json_response(
        {"payout_id": view["payout_id"], "status": view["status"], "amount": view["amount"]},
        status=202,
    )


async def post_leave_challenge(request: web.Request) -> web.Response:
    """A leave action for the payout key to sign."""
    state = request.app[STATE]
    session, farmer = await _owned(request)
    await _body(request, {})
    _limit_address(state, session.address, "requests")
    return _offered(state.actions.offer(await _action(state, "leave", farmer)))


async def post_leave(request: web.Request) -> web.Response:
    """The signed leave: forwarded to the pool, which checks the signature."""
    state = request.app[STATE]
    _, farmer = await _owned(request)
    offered, signed = await _signed(request, "leave")
    _same_farmer(offered, farmer)
    left = await state.pool.leave(farmer.farmer_id, signed)
    return web.json_response(
        {"status": farmer_status(left.farmer), "pending_harvests": left.pending_harvests},
        status=202,
    )


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
    app.router.add_post("/api/join/challenge", post_join_challenge)
    app.router.add_post("/api/join", post_join)
    farmer = "/api/farmers/{farmer_id}"
    app.router.add_get(farmer, get_farmer)
    app.router.add_get(f"{farmer}/qr.svg", get_qr)
    app.router.add_get(f"{farmer}/history", get_history)
    app.router.add_get(f"{farmer}/history.csv", get_history_csv)
    app.router.add_get(f"{farmer}/ledger", get_ledger)
    app.router.add_post(f"{farmer}/payout/challenge", post_payout_challenge)
    app.router.add_post(f"{farmer}/payout", post_payout)
    app.router.add_get(f"{farmer}/payouts", get_payouts)
    app.router.add_post(f"{farmer}/leave/challenge", post_leave_challenge)
    app.router.add_post(f"{farmer}/leave", post_leave)
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
