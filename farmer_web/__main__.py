"""`python -m farmer_web`: serve the farmers' web page from the environment's settings.

Needs `KALE_POOL_WEB_LISTEN` (host:port); reads the `web-server` and `farmer-web`
certificates and the CA from the data directory's `certs/` and calls the pool at
`KALE_POOL_WEB_POOL_ADDRESS` (default `KALE_POOL_POOL_LISTEN`). No database, no wallet.
"""

from __future__ import annotations

import asyncio
import sys

from farmer_web.app import WebServer, start_web_server
from farmer_web.pool import PoolReader
from farmer_web.sessions import SignIn
from kalepool.logs import configure_logging
from kalepool.processes import wait_for_shutdown
from kalepool.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from kalepool.tls import FARMER_WEB, WEB_SERVER, CertificateFiles, MissingCertificateError


async def start_web_for(settings: Settings) -> WebServer:
    """Start the web page the settings describe (web_listen must be set)."""
    assert settings.web_listen
    host, _, port = settings.web_listen.rpartition(":")
    certs = CertificateFiles(settings.layout().certs)
    certs.check(WEB_SERVER, FARMER_WEB)
    pool = PoolReader(
        settings.web_pool_address or settings.pool_listen,
        certs.identity(FARMER_WEB),
        certs.ca_pem,
    )
    return await start_web_server(
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        certs=certs,
        server_name=WEB_SERVER,
        pool=pool,
        sign_in=SignIn(settings.web_challenge_seconds, settings.web_session_seconds),
        per_ip_per_minute=settings.web_rate_limit_ip_per_minute,
        per_address_per_minute=settings.web_rate_limit_address_per_minute,
    )


async def _serve(settings: Settings) -> None:
    server = await start_web_for(settings)
    host = (settings.web_listen or "").rpartition(":")[0] or "127.0.0.1"
    print(f"farmers' web page: https://{host}:{server.port}/", flush=True)
    try:
        await wait_for_shutdown()
    finally:
        await server.stop()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"farmer web: {error}", file=sys.stderr)
        return 2
    if not settings.web_listen or not settings.web_listen.rpartition(":")[2].isdigit():
        print(f"farmer web: set {ENV_PREFIX}WEB_LISTEN to host:port", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings)
    try:
        asyncio.run(_serve(settings))
    except (MissingCertificateError, OSError) as error:
        print(f"farmer web: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
