"""Alert texts posted to the operator's webhook (`KALE_POOL_ALERT_WEBHOOK_URL`): the pool's
alert engine and the wallet's payout policy both post through it.

The post is `{"content": text, "text": text}` (Discord reads `content`, Slack `text`),
retried with exponential backoff; a webhook that stays down is logged and never stops the
service. Every text goes through `kalepool.masking.redact` on its way out, and the URL
(which carries the webhook's own secret) is only ever logged masked.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from kalepool.masking import mask_url, redact
from kalepool.settings import Settings

log = logging.getLogger("kalepool.webhook")


class Webhook:
    """Posts alert texts to the webhook URL, with retries; never raises."""

    def __init__(self, url: str | None, attempts: int, first_delay: float = 1.0) -> None:
        self.url = url
        self.attempts = attempts
        self.first_delay = first_delay

    @classmethod
    def of(cls, settings: Settings) -> Webhook:
        """The webhook the settings name (none: texts are only logged)."""
        url = settings.alert_webhook_url
        return cls(url.get_secret_value() if url else None, settings.alert_webhook_attempts)

    async def post(self, text: str) -> bool:
        """Post `text` (redacted); whether the webhook took it."""
        text = redact(text)
        log.warning("alert: %s", text)
        if self.url is None:
            return False
        body = {"content": text, "text": text}
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            why = await self._try(body)
            if why is None:
                return True
            if attempt < self.attempts:
                log.warning(
                    "alert webhook %s: %s; retrying in %.0f s", mask_url(self.url), why, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        log.error("alert webhook %s gave up after %d tries", mask_url(self.url), self.attempts)
        return False

    async def _try(self, body: dict[str, str]) -> str | None:
        """One post; None when it was taken, else why not."""
        assert self.url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.url, json=body) as answer,
            ):
                if 200 <= answer.status < 300:
                    return None
                return f"HTTP {answer.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return type(exc).__name__
