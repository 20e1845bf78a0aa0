"""A farmer's life through the web API over HTTPS, against the real pool, wallet and
devnet: join with a signed action (a session opens), fund from the devnet's friendbot
(the farmer becomes active without anyone pressing confirm), the QR code, history from
the pool's books (JSON and CSV), the ledger, a signed payout that settles on chain, a
signed leave; and the refusals (a wrong or another key's signature, an expired or reused
challenge, another farmer's data, malformed input), each with a clear message and
nothing changed."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
from typing import Any

import psycopg
import pytest
import segno
from stellar_sdk import Keypair

from farmer_web.app import COOKIE, pay_uri
from kalepool.chain import kale_balance
from tests.waits import until
from tests.web.conftest import WebStage

KALE = 10_000_000


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def _join(web: WebStage, key: Keypair, pooler_id: str, bps: int = 5000) -> dict[str, Any]:
    status, made, _ = await web.call(
        "POST",
        "/api/join/challenge",
        {"payout_address": key.public_key, "pooler_id": pooler_id, "stake_bps": bps},
    )
    assert status == 200, made
    status, joined, response = await web.call(
        "POST",
        "/api/join",
        {"challenge_id": made["challenge_id"], "signature": b64(key.sign_message(made["message"]))},
    )
    assert status == 201, joined
    joined["cookie"] = response.cookies[COOKIE].value
    return joined


async def _act(
    web: WebStage,
    path: str,
    body: dict[str, Any],
    signer: Keypair,
    session: str,
    csrf: str,
) -> tuple[int, Any]:
    """Ask for an action challenge at `path`/challenge, sign it, answer at `path`."""
    status, made, _ = await web.call("POST", f"{path}/challenge", body, session=session, csrf=csrf)
    assert status == 200, made
    status, answer, _ = await web.call(
        "POST",
        path,
        {
            "challenge_id": made["challenge_id"],
            "signature": b64(signer.sign_message(made["message"])),
        },
        session=session,
        csrf=csrf,
    )
    return status, answer


async def _count(web: WebStage, table: str) -> int:
    return await web.pool.count(table)


async def test_join_fund_history_payout_and_leave(web: WebStage) -> None:
    pool = web.pool
    web.server.state.confirms.seconds = 0.2  # the page's polls reach the pool quickly here
    pooler, _ = await pool.register_pooler("web-flow-rig")
    key = await pool.stage.account(trust=True)  # the payout account: it can receive KALE

    joined = await _join(web, key, pooler.pooler_id, 2500)
    fid, session, csrf = joined["farmer_id"], joined["cookie"], joined["csrf_token"]
    custodial = joined["custodial_address"]
    assert joined["status"] == "pending_funding"
    funding = joined["funding"]
    assert funding["account_exists"] is False and funding["trustline"] is False
    assert funding["min_funding_xlm"] == {"stroops": "20000000", "xlm": "2.0000000"}
    assert custodial in funding["next_step"] and "XLM" in funding["next_step"]
    # The join opened a session for the payout address.
    status, me, _ = await web.call("GET", "/api/me", session=session)
    assert status == 200 and me["address"] == key.public_key
    assert [f["farmer_id"] for f in me["farmers"]] == [fid]

    # The QR code holds a payment request to the custodial account.
    status, svg, response = await web.call("GET", f"/api/farmers/{fid}/qr.svg", session=session)
    assert status == 200 and response.content_type == "image/svg+xml"
    out = io.BytesIO()
    segno.make(pay_uri(custodial), error="m").save(
        out, kind="svg", scale=4, dark="#000", light="#fff", xmldecl=False
    )
    # A standalone SVG (its namespace declared), as an <img> needs it.
    assert svg == out.getvalue().decode()
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')

    # Fund it from the friendbot: the page only polls, the server confirms.
    await pool.stage.friendbot(custodial)
    seen: dict[str, Any] = {}

    async def active() -> bool:
        status, view, _ = await web.call("GET", f"/api/farmers/{fid}", session=session)
        assert status == 200, view
        seen.update(view)
        return bool(view["status"] == "active")

    await until(active, 30, what="the farmer to become active", poll=0.3)
    assert seen["funding"]["trustline"] is True and seen["funding"]["account_exists"] is True
    assert seen["stake_bps"] == 2500 and seen["payout_address"] == key.public_key
    assert int(seen["funding"]["xlm_balance"]["stroops"]) > 0

    # KALE deposited on chain: the pool's chain follower credits it.
    await pool.stage.friendbot(custodial, 10 * KALE)

    async def credited() -> bool:
        _, view, _ = await web.call("GET", f"/api/farmers/{fid}", session=session)
        return bool(view["balance"]["stroops"] == str(10 * KALE))

    await until(credited, 30, what="the deposit to be credited", poll=0.3)
    status, ledger, _ = await web.call("GET", f"/api/farmers/{fid}/ledger", session=session)
    assert status == 200 and ledger["entries"][0]["kind"] == "deposit"
    assert ledger["entries"][0]["amount"] == {"stroops": str(10 * KALE), "kale": "10.0000000"}

    # History from the pool's books: a planted, worked and harvested block.
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        args = (fid, pooler.pooler_id, custodial)
        await conn.execute(
            "INSERT INTO plantings (block_index, farmer_id, pooler_id, custodial_public_key,"
            " stake_amount, tx_hash, ledger, status) VALUES (7, %s, %s, %s, 2500, %s, 5,"
            " 'success')",
            (*args, "d" * 64),
        )
        await conn.execute(
            "INSERT INTO works (block_index, farmer_id, pooler_id, custodial_public_key,"
            " status, fault, error_message) VALUES (7, %s, %s, %s, 'failed', 'pooler',"
            " '=HYPERLINK(\"x\") no work came')",
            args,
        )
    status, history, _ = await web.call(
        "GET", f"/api/farmers/{fid}/history?limit=10", session=session
    )
    assert status == 200, history
    [row] = history["blocks"]
    assert (row["block"], row["planted"], row["worked"], row["harvested"]) == (
        7,
        True,
        False,
        False,
    )
    assert row["stake"] == {"stroops": "2500", "kale": "0.0002500"}
    assert row["failure"] == '=HYPERLINK("x") no work came'
    status, text, response = await web.call(
        "GET", f"/api/farmers/{fid}/history.csv", session=session
    )
    assert status == 200 and response.content_type == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:3] == ["block", "planted", "stake_kale"]
    # A failure text is never a spreadsheet formula.
    assert table[1] == [
        "7", "true", "0.0002500", "false", "0", "false", "0.0000000", "0.0000000",
        "0.0000000", "'=HYPERLINK(\"x\") no work came",
    ]  # fmt: skip

    # A payout of 3 KALE, signed by the payout key, settles on chain.
    status, paid = await _act(
        web, f"/api/farmers/{fid}/payout", {"amount_stroops": str(3 * KALE)}, key, session, csrf
    )
    assert status == 202, paid
    assert paid["amount"]["stroops"] == str(3 * KALE)

    async def settled() -> bool:
        status, payouts, _ = await web.call("GET", f"/api/farmers/{fid}/payouts", session=session)
        assert status == 200, payouts
        return [p["status"] for p in payouts] == ["success"]

    await until(settled, 30, what="the payout to settle", poll=0.3)
    assert await kale_balance(pool.chain, key.public_key) == 3 * KALE

    # Leaving, signed too.
    status, left = await _act(web, f"/api/farmers/{fid}/leave", {}, key, session, csrf)
    assert status == 202, left
    assert left["status"] in ("leaving", "departed")


async def test_refusals_say_why_and_change_nothing(web: WebStage) -> None:
    pool = web.pool
    pooler, _ = await pool.register_pooler("web-refusal-rig")
    key = await pool.stage.account(trust=True)
    joined = await _join(web, key, pooler.pooler_id)
    fid, session, csrf = joined["farmer_id"], joined["cookie"], joined["csrf_token"]
    await pool.credit(fid, 5 * KALE)  # books only: enough to ask for payouts
    before = await pool.counts()
    nonces = await _count(web, "action_nonces")

    # Malformed input: 400 naming the field, before anything is asked of the pool.
    for body, words in (
        ({"payout_address": "GXYZ", "pooler_id": pooler.pooler_id, "stake_bps": 1}, "address"),
        ({"payout_address": key.public_key, "pooler_id": "x", "stake_bps": 1}, "pooler_id"),
        (
            {"payout_address": key.public_key, "pooler_id": pooler.pooler_id, "stake_bps": 10001},
            "stake_bps must be a whole number from 0 to 10000",
        ),
        (
            {"payout_address": key.public_key, "pooler_id": pooler.pooler_id, "stake_bps": True},
            "stake_bps",
        ),
    ):
        status, answer, _ = await web.call("POST", "/api/join/challenge", body)
        assert status == 400 and words in answer["error"], answer
    for path, words in (
        (f"/api/farmers/{fid}/history?limit=0", "limit must be a whole number from 1 to 500"),
        (f"/api/farmers/{fid}/ledger?limit=501", "limit"),
        ("/api/farmers/not-a-uuid", "farmer id"),
    ):
        status, answer, _ = await web.call("GET", path, session=session)
        assert status == 400 and words in answer["error"], answer
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/payout/challenge",
        {"amount_stroops": "12abc"},
        session=session,
        csrf=csrf,
    )
    assert status == 400 and "amount_stroops" in answer["error"]
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/payout/challenge",
        {"amount_stroops": 6 * KALE},
        session=session,
        csrf=csrf,
    )
    assert status == 409 and "at most 5.0000000 KALE" in answer["error"]
    # A write without the CSRF token.
    status, answer, _ = await web.call(
        "POST", f"/api/farmers/{fid}/leave/challenge", {}, session=session
    )
    assert status == 403 and "X-CSRF-Token" in answer["error"]

    # A payout signed by another key: the pool refuses it, says why.
    stranger = Keypair.random()
    status, answer = await _act(
        web, f"/api/farmers/{fid}/payout", {"amount_stroops": KALE}, stranger, session, csrf
    )
    assert status == 403 and f"not {key.public_key}'s SEP-53 signature" in answer["error"]
    # A signature that is no signature.
    status, made, _ = await web.call(
        "POST", f"/api/farmers/{fid}/leave/challenge", {}, session=session, csrf=csrf
    )
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/leave",
        {"challenge_id": made["challenge_id"], "signature": "not base64!"},
        session=session,
        csrf=csrf,
    )
    assert status == 400 and "base64" in answer["error"]
    # (a malformed signature does not use the challenge up) Answered as another action:
    # refused, and used up: the right answer afterwards finds it gone.
    good = b64(key.sign_message(made["message"]))
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/payout",
        {"challenge_id": made["challenge_id"], "signature": good},
        session=session,
        csrf=csrf,
    )
    assert status == 400 and "payout challenge" in answer["error"]
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/leave",
        {"challenge_id": made["challenge_id"], "signature": good},
        session=session,
        csrf=csrf,
    )
    assert status == 400 and "already used leave challenge" in answer["error"]

    # Another farmer's data: 404, as for an unknown farmer, for reads and writes.
    other = Keypair.random()
    other_session, other_csrf = await web.sign_in(other)
    for path in ("", "/history", "/history.csv", "/ledger", "/payouts", "/qr.svg"):
        status, answer, _ = await web.call(
            "GET", f"/api/farmers/{fid}{path}", session=other_session
        )
        assert status == 404 and "you have no farmer" in answer["error"], (path, answer)
    status, answer, _ = await web.call(
        "POST",
        f"/api/farmers/{fid}/leave/challenge",
        {},
        session=other_session,
        csrf=other_csrf,
    )
    assert status == 404
    status, answer, _ = await web.call("GET", f"/api/farmers/{fid}")
    assert status == 401

    assert await pool.counts() == before
    assert await _count(web, "action_nonces") == nonces
    status, view, _ = await web.call("GET", f"/api/farmers/{fid}", session=session)
    assert view["status"] == "pending_funding" and view["balance"]["stroops"] == str(5 * KALE)


@pytest.mark.parametrize("web", [{"challenge_seconds": 1}], indirect=True)
async def test_an_expired_action_is_refused_by_the_pool(web: WebStage) -> None:
    pooler, _ = await web.pool.register_pooler("web-expiry-rig")
    key = Keypair.random()
    status, made, _ = await web.call(
        "POST",
        "/api/join/challenge",
        {"payout_address": key.public_key, "pooler_id": pooler.pooler_id, "stake_bps": 0},
    )
    assert status == 200
    farmers = await web.pool.count("farmers")
    await asyncio.sleep(2.1)  # past the message's own expiry (whole seconds)
    status, answer, _ = await web.call(
        "POST",
        "/api/join",
        {"challenge_id": made["challenge_id"], "signature": b64(key.sign_message(made["message"]))},
    )
    assert status == 403 and "expired" in answer["error"], answer
    assert await web.pool.count("farmers") == farmers
    assert await web.pool.count("action_nonces") == 0
