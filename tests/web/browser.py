"""A real browser for the page's tests: Playwright for Python driving the system's
Chromium (Debian's `chromium` package; Playwright's own browsers are never downloaded).

`chromium_path()` finds it (`KALE_POOL_CHROMIUM` first); the `browser` fixture skips,
naming the package to install, only when there is none. `KALE_POOL_SCREENSHOTS=DIR`
makes `shot()` keep a PNG of each page the tests reach (`make screenshots` writes the
docs' images this way).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from stellar_sdk import Keypair

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MISSING = (
    "no Chromium to drive: install Debian's chromium package (apt-get install chromium)"
    " or set KALE_POOL_CHROMIUM to a Chromium binary"
)
PHONE = {"width": 412, "height": 860}
"""A phone's viewport: the screenshots show the page as most farmers see it."""


def chromium_path() -> str | None:
    """The system's Chromium, or None."""
    given = os.environ.get("KALE_POOL_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session (each test opens its own context)."""
    path = chromium_path()
    if path is None:
        pytest.skip(MISSING)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def open_context(browser: Browser, *, phone: bool = True) -> BrowserContext:
    """A fresh profile (no cookies) that accepts the development CA's certificate: the
    page is served over HTTPS exactly as in production, only its CA is not a public one."""
    context = await browser.new_context(
        ignore_https_errors=True,
        viewport=PHONE if phone else {"width": 1100, "height": 900},
        accept_downloads=True,
        reduced_motion="reduce",
    )
    context.set_default_timeout(30_000)
    return context


def signature_of(keypair: Keypair, message: str) -> str:
    """What a wallet's "sign message" (SEP-53) gives, base64, as a farmer pastes it."""
    return base64.b64encode(keypair.sign_message(message)).decode()


async def sign_shown_message(page: Page, host: str, keypair: Keypair) -> None:
    """The manual path: read the message the page shows in `host`, sign it with the
    farmer's key outside the page, paste the signature and send it."""
    message = await page.locator(f"#{host} pre.message").text_content()
    assert message, "the page shows no message to sign"
    await page.locator(f"#{host} textarea").fill(signature_of(keypair, message))
    await page.locator(f"#{host} button.signer-submit").click()


async def shot(page: Page, name: str) -> None:
    """A PNG of the whole page into $KALE_POOL_SCREENSHOTS (when set)."""
    where = os.environ.get("KALE_POOL_SCREENSHOTS")
    if not where:
        return
    # Playwright makes the directory.
    await page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)
