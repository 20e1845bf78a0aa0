"""A farmer's whole cycle in the browser against `kale-pool up` (in the default suite,
about a minute and a half; `make browser-cycle` runs it alone): the stack's own processes
on short blocks, the page at the URL `up` printed. A new farmer joins (the manual signing
path), funds through the devnet's friendbot, and watches its blocks planted, worked and
harvested by the demo pooler until a reward shows on the dashboard and in the CSV;
withdraws and sees it settle; then leaves."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from stellar_sdk import Keypair

from kalepool.app.funding import Friendbot, ensure_account, ensure_trustline
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, resolve_chain_config
from tests.stackkit import settings_for, spawn_up, wait_running
from tests.web.browser import browser, open_context, shot, sign_shown_message  # noqa: F401

pytestmark = pytest.mark.slow
KALE = 10_000_000


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Path, RunState]]:
    """`kale-pool up` with one pooler and one demo farmer, on 20-second blocks."""
    data = tmp_path / "data"
    proc = await spawn_up(data, "--poolers", "1", "--farmers", "1", block_seconds=20)
    try:
        yield data, await wait_running(data, proc, poolers=1)
    finally:
        if proc.returncode is None:
            proc.send_signal(2)
            try:
                await asyncio.wait_for(proc.wait(), 120)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_farmer_joins_funds_and_sees_its_harvested_reward(
    stack: tuple[Path, RunState],
    browser: Browser,  # noqa: F811
) -> None:
    data, state = stack
    settings = settings_for(data).model_copy(update={"rpc_url": state.rpc_url})
    chain = ChainClient(await resolve_chain_config(settings), poll_interval=0.5)
    friendbot = await Friendbot.for_network(settings, state.rpc_url)
    assert friendbot is not None
    payout = Keypair.random()
    try:
        await ensure_account(chain, friendbot, payout.public_key)
        await ensure_trustline(chain, payout)

        context = await open_context(browser, phone=False)
        page = await context.new_page()
        await page.goto(state.web_url + "#join")
        # The demo pooler is there to pick; the demo farmer counts in it.
        await expect(page.locator("#join-pooler option")).to_have_count(1)
        await page.fill("#join-address", payout.public_key)
        await page.fill("#join-stake", "50")
        await page.click("#join-form button")
        await sign_shown_message(page, "join-sign", payout)
        await expect(page).to_have_url(re.compile(r"#farmer/[^/]+/funding$"))
        farmer_id = page.url.split("#farmer/")[1].split("/")[0]
        shown = page.locator("#funding-address")
        await expect(shown).to_have_text(re.compile(r"^G[A-Z2-7]{55}$"))
        address = (await shown.text_content()) or ""
        await friendbot.xlm(address)
        await expect(page.locator("#funding-facts dd").first).to_have_text(
            "active", timeout=120_000
        )
        await friendbot.kale_stroops(address, 20 * KALE)
        await expect(page.locator("#funding-facts dd").nth(3)).to_have_text("20", timeout=120_000)

        # Blocks go by: planted, worked, harvested, the reward shown.
        await page.goto(f"{state.web_url}#farmer/{farmer_id}")
        harvested = page.locator("#history tr", has=page.locator("td:nth-child(6)", has_text="yes"))
        await expect(harvested.first).to_be_visible(timeout=300_000)
        row = harvested.first.locator("td")
        await expect(row.nth(1)).to_have_text("yes")  # planted
        await expect(row.nth(3)).to_have_text("yes")  # worked
        await expect(row.nth(6)).to_have_attribute("title", re.compile(r"\(\d*[1-9]\d* stroops\)"))
        await expect(page.locator("#history-chart rect.bar")).not_to_have_count(0)
        await shot(page, "dashboard-harvested")
        async with page.expect_download() as got:
            await page.click("#dashboard-csv")
        csv = await asyncio.to_thread((await (await got.value).path()).read_text)
        assert len(csv.strip().splitlines()) >= 2, csv

        # A withdrawal, signed by the payout key, settles on chain.
        await page.click("#dashboard-withdraw")
        await page.fill("#withdraw-amount", "2")
        await page.click("#withdraw-form button")
        await sign_shown_message(page, "withdraw-sign", payout)
        await expect(page.locator("#withdraw-status")).to_contain_text("requested")
        paid = page.locator("#payouts tr").first
        await expect(paid.locator("td").nth(1)).to_have_text("success", timeout=120_000)

        # The pool view, farming: the blocks' table and the chart of their rewards.
        await page.goto(state.web_url)
        await expect(page.locator("#blocks tr td").first).not_to_have_text("No block farmed yet.")
        await expect(page.locator("#blocks-chart rect.bar")).not_to_have_count(0)
        await shot(page, "pool-farming")

        await page.goto(f"{state.web_url}#farmer/{farmer_id}/leave")
        await page.click("#leave-form button")
        await sign_shown_message(page, "leave-sign", payout)
        await expect(page.locator("#leave-status")).to_contain_text(
            re.compile("(is leaving|has left) the pool")
        )
        await context.close()
    finally:
        await friendbot.close()
        await chain.aclose()
