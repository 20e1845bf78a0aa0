"""The farmers' page in a real browser (the system's Chromium through Playwright) against
the real web server over HTTPS, in front of the real pool, wallet and devnet: what a
farmer sees and does, signing each action outside the page (the manual path: the test
signs the message the page shows with the payout key and pastes the signature), and
what the page shows when the server refuses."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

from playwright.async_api import Browser, Page, expect
from stellar_sdk import Keypair

from tests.pool.conftest import KALE
from tests.web.browser import (  # noqa: F401
    browser,
    open_context,
    shot,
    sign_shown_message,
    signature_of,
)
from tests.web.conftest import WebStage


async def _open(browser: Browser, web: WebStage, fragment: str = "") -> Page:  # noqa: F811
    context = await open_context(browser)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{web.url}/{fragment}")
    return page


def _script_errors(page: Page) -> list[str]:
    """Script errors the page raised (a refused request logs one too: those are kept
    apart by the tests that expect them)."""
    found: list[str] = page.errors  # type: ignore[attr-defined]
    return [e for e in found if "Failed to load resource" not in e]


async def test_the_pool_view_shows_poolers_blocks_and_exact_amounts(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    pooler, _ = await web.pool.register_pooler("field-rig", max_farmers=10)
    await web.pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=2 * KALE)
    page = await _open(browser, web)
    row = page.locator("#poolers tr", has_text="field-rig")
    await expect(row).to_have_count(1)
    await expect(row.locator("td").nth(1)).to_have_text("1 / 10")
    # Every amount's exact value, to the stroop, is in its title.
    rewards = row.locator("td").last
    await expect(rewards).to_have_attribute("title", re.compile(r"KALE \(\d+ stroops\)$"))
    await expect(page.locator("#summary")).to_contain_text("1 active farmer")
    # No block farmed on this stage: the chart says so (the bars: test_browser_cycle.py).
    await expect(page.locator("#blocks-chart")).to_contain_text("Rewards per block")
    await expect(page.locator("nav a[aria-current=page]")).to_have_text("Pool")
    assert _script_errors(page) == []
    await page.context.close()


async def test_sign_in_by_pasting_a_signature_and_refusals_shown_on_the_page(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    pooler, _ = await web.pool.register_pooler("signin-rig")
    mine, theirs = Keypair.random(), Keypair.random()
    farmer = await web.pool.funded_farmer(
        pooler.pooler_id, stake_bps=2500, kale=3 * KALE, payout_address=mine.public_key
    )
    other = await web.pool.funded_farmer(pooler.pooler_id, payout_address=theirs.public_key)
    page = await _open(browser, web, "#signin")
    status = page.locator("#signin-status")

    # Malformed input: refused before anything is asked of the server, said in words.
    await page.fill("#signin-address", "GNOTANADDRESS")
    await page.click("#signin-form button")
    await expect(status).to_contain_text("56 characters starting with G")

    async def challenge() -> None:
        await page.fill("#signin-address", mine.public_key)
        await page.click("#signin-form button")
        await expect(page.locator("#signin-sign pre.message")).to_contain_text(mine.public_key)

    # A signature by another key: the server's refusal, shown.
    await challenge()
    await sign_shown_message(page, "signin-sign", theirs)
    await expect(status).to_contain_text(f"is not {mine.public_key}'s signature")
    # A signature that is not base64 at all.
    await challenge()
    await page.fill("#signin-sign textarea", "this is not base64!")
    await page.click("#signin-sign button.signer-submit")
    await expect(status).to_contain_text("signature")
    await expect(page.locator("#farm-list")).to_be_hidden()

    # The right key: signed in, the farm lists this address's farmer and no other.
    await challenge()
    await sign_shown_message(page, "signin-sign", mine)
    await expect(page).to_have_url(re.compile("#farm$"))
    await expect(page.locator("#farm-who")).to_contain_text(mine.public_key)
    await expect(page.locator("#farm-list")).to_contain_text(f"Farmer {farmer.farmer_id}")
    content = await page.content()
    assert other.farmer_id not in content and other.custodial_address not in content

    # Another farmer's page: refused, nothing of theirs shown.
    await page.goto(f"{web.url}/#farmer/{other.farmer_id}")
    refused = page.locator("#dashboard-status")
    await expect(refused).to_contain_text(f"you have no farmer {other.farmer_id}")
    content = await page.content()
    assert other.custodial_address not in content and theirs.public_key not in content
    await page.context.close()


async def test_an_expired_challenge_is_refused_with_a_clear_message(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    keypair = Keypair.random()
    page = await _open(browser, web, "#signin")
    await page.fill("#signin-address", keypair.public_key)
    await page.click("#signin-form button")
    await expect(page.locator("#signin-sign pre.message")).to_be_visible()
    # The farmer comes back after the challenge's lifetime: the server's clock moves on.
    sign_in = web.server.state.sign_in
    real_clock = sign_in.clock
    sign_in.clock = lambda: real_clock() + dt.timedelta(seconds=sign_in.challenge_seconds + 1)
    await sign_shown_message(page, "signin-sign", keypair)
    await expect(page.locator("#signin-status")).to_contain_text("expired")
    await page.context.close()


async def test_a_new_farmer_joins_funds_withdraws_and_leaves_in_the_browser(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    pooler, _ = await web.pool.register_pooler("join-rig", max_farmers=5)
    # The farmer's own account, with a KALE trustline: payouts go there.
    [payout] = await web.pool.stage.accounts(1, trust=True)
    stranger = Keypair.random()
    page = await _open(browser, web, "#join")
    status = page.locator("#join-status")

    async def ask_to_join() -> None:
        await page.select_option("#join-pooler", pooler.pooler_id)
        await page.fill("#join-address", payout.public_key)
        await page.fill("#join-stake", "40")
        await page.click("#join-form button")
        await expect(page.locator("#join-sign pre.message")).to_contain_text("join")

    # Malformed input is said in words; a signature by another key is the pool's refusal.
    await page.fill("#join-address", payout.public_key)
    await page.fill("#join-stake", "140")
    await page.click("#join-form button")
    await expect(status).to_contain_text("from 0 to 100")
    farmers = await web.pool.count("farmers")
    await ask_to_join()
    await sign_shown_message(page, "join-sign", stranger)
    await expect(status).to_contain_text("signature")
    await expect(page).to_have_url(re.compile("#join$"))
    assert await web.pool.count("farmers") == farmers  # refused: nobody registered

    # Joined for real: the message names the action, the address and the stake. Without
    # a wallet in the browser there is no Freighter button, only the pasted signature.
    await ask_to_join()
    await expect(page.locator("#join-sign .signer-freighter")).to_be_hidden()
    message = page.locator("#join-sign pre.message")
    await expect(message).to_contain_text(payout.public_key)
    await expect(message).to_contain_text("4000")
    await shot(page, "join")
    await sign_shown_message(page, "join-sign", payout)
    await expect(page).to_have_url(re.compile(r"#farmer/[^/]+/funding$"))
    farmer_id = page.url.split("#farmer/")[1].split("/")[0]

    # Funding: the address, its QR code, what to send; the status follows by itself.
    await expect(page.locator("#funding-address")).to_have_text(re.compile(r"^G[A-Z2-7]{55}$"))
    address = (await page.locator("#funding-address").text_content()) or ""
    qr = page.locator("#funding-qr")
    await expect(qr).to_have_attribute("src", f"/api/farmers/{farmer_id}/qr.svg")
    await page.wait_for_function("() => document.getElementById('funding-qr').naturalWidth > 0")
    await expect(page.locator("#funding-min-xlm")).to_have_text(re.compile(r"^\d"))
    await expect(page.locator("#funding-next")).not_to_be_empty()
    await shot(page, "funding")
    await web.pool.stage.friendbot(address)  # the XLM
    state = page.locator("#funding-facts dd").first
    await expect(state).to_have_text("active", timeout=60_000)
    await web.pool.stage.friendbot(address, 5 * KALE)  # then the KALE
    deposited = page.locator("#funding-facts dd").nth(3)
    await expect(deposited).to_have_text("5", timeout=60_000)
    exact = re.compile("50000000 stroops")
    await expect(deposited.locator("span")).to_have_attribute("title", exact)

    # The dashboard: balance, stake, the blocks' history and its CSV.
    await page.click("#funding-dashboard")
    facts = page.locator("#dashboard-facts")
    await expect(facts).to_contain_text("40 %")
    await expect(facts.locator("dd").nth(2)).to_have_text("5 KALE")
    await expect(page.locator("#history-chart")).to_contain_text("no blocks yet")
    async with page.expect_download() as got:
        await page.click("#dashboard-csv")
    download = await got.value
    csv = await asyncio.to_thread((await download.path()).read_text)
    assert csv.splitlines()[0].startswith("block"), csv

    # Withdraw 1.5 KALE: the exact stroops are what the farmer signs; it settles.
    await page.click("#dashboard-withdraw")
    await page.fill("#withdraw-amount", "1.5x")
    await page.click("#withdraw-form button")
    await expect(page.locator("#withdraw-status")).to_contain_text("at most 7 decimals")
    await page.fill("#withdraw-amount", "1.5")
    await page.click("#withdraw-form button")
    await expect(page.locator("#withdraw-sign pre.message")).to_contain_text("15000000")
    await sign_shown_message(page, "withdraw-sign", payout)
    await expect(page.locator("#withdraw-status")).to_contain_text("requested")
    row = page.locator("#payouts tr").first
    await expect(row).to_contain_text("1.5")
    await expect(row.locator("td").nth(1)).to_have_text("success", timeout=90_000)
    await shot(page, "withdraw")

    # Leave, signed too.
    await page.goto(f"{web.url}/#farmer/{farmer_id}/leave")
    await page.click("#leave-form button")
    await expect(page.locator("#leave-sign pre.message")).to_contain_text("leave")
    await sign_shown_message(page, "leave-sign", payout)
    await expect(page.locator("#leave-status")).to_contain_text(
        re.compile("(is leaving|has left) the pool")
    )
    await shot(page, "leave")
    assert _script_errors(page) == [], _script_errors(page)
    await page.context.close()


async def test_with_freighter_in_the_browser_the_page_signs_through_it(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    """Freighter's `window.freighterApi.signMessage` (here a stand-in that signs with the
    farmer's key outside the page, as the extension does) signs at a click."""
    keypair = Keypair.random()
    asked: list[tuple[str, str]] = []

    def sign(message: str, address: str) -> str:
        asked.append((message, address))
        return signature_of(keypair, message)

    context = await open_context(browser)
    await context.expose_function("walletSigns", sign)
    await context.add_init_script(
        "window.freighterApi = { signMessage: async (message, opts) =>"
        " ({ signedMessage: await window.walletSigns(message, opts.address),"
        " signerAddress: opts.address }) };"
    )
    page = await context.new_page()
    await page.goto(f"{web.url}/#signin")
    await page.fill("#signin-address", keypair.public_key)
    await page.click("#signin-form button")
    await page.click("#signin-sign .signer-freighter")
    await expect(page).to_have_url(re.compile("#farm$"))
    await expect(page.locator("#farm-who")).to_contain_text(keypair.public_key)
    [(message, address)] = asked
    assert address == keypair.public_key and keypair.public_key in message
    await context.close()
