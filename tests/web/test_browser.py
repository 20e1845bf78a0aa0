"""The farmers' page in a real browser (the system's Chromium through Playwright) against
the real web server over HTTPS, in front of the real pool, wallet and devnet: what a
farmer sees and does, signing each action outside the page (the manual path: the test
signs the message the page shows with the payout key and pastes the signature), and
what the page shows when the server refuses."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Browser, Page, expect
from stellar_sdk import Keypair

from tests.pool.conftest import KALE
from tests.web.browser import browser, open_context, shot, sign_shown_message  # noqa: F401
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
    await expect(page.locator("#summary")).to_contain_text("1 active farmers")
    await expect(page.locator("#blocks-chart svg[role=img]")).to_have_count(1)
    await expect(page.locator("nav a[aria-current=page]")).to_have_text("Pool")
    await shot(page, "pool")
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
    await shot(page, "sign-message")
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
    await expect(page.locator("#dashboard-status")).to_contain_text(re.compile("not found", re.I))
    content = await page.content()
    assert other.custodial_address not in content and theirs.public_key not in content
    await page.context.close()


@pytest.mark.parametrize("web", [{"challenge_seconds": 10}], indirect=True)
async def test_an_expired_challenge_is_refused_with_a_clear_message(
    web: WebStage,
    browser: Browser,  # noqa: F811
) -> None:
    keypair = Keypair.random()
    page = await _open(browser, web, "#signin")
    await page.fill("#signin-address", keypair.public_key)
    await page.click("#signin-form button")
    await expect(page.locator("#signin-sign pre.message")).to_be_visible()
    await asyncio.sleep(10.5)  # past the challenge's lifetime
    await sign_shown_message(page, "signin-sign", keypair)
    await expect(page.locator("#signin-status")).to_contain_text("expired")
    await page.context.close()
