"""The web page's stage: the pool's stage (real PostgreSQL, devnet, wallet and pool
servers over mTLS) and the web server in front of it on 127.0.0.1 over HTTPS, calling
the pool as `farmer-web`; requests go through a real aiohttp client that trusts the
development CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from farmer_web.app import COOKIE, CSRF_HEADER, WebServer, start_web_server
from farmer_web.pool import PoolReader
from farmer_web.sessions import SignIn
from kalepool.tls import FARMER_WEB, POOL_SERVER, WEB_SERVER, DevPki
from tests.pool.conftest import PoolStage, pki, pool  # noqa: F401  (fixtures)


@dataclass
class WebStage:
    pool: PoolStage
    server: WebServer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        session: str | None = None,
        csrf: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """One request; (status, JSON body or text, the response)."""
        sent = dict(headers or {})
        if session is not None:
            sent["Cookie"] = f"{COOKIE}={session}"
        if csrf is not None:
            sent[CSRF_HEADER] = csrf
        async with self.http.request(
            method, f"{self.url}{path}", json=body, data=data, headers=sent
        ) as response:
            text = await response.text()
            try:
                parsed: Any = await response.json(content_type=None)
            except ValueError:
                parsed = text
            return response.status, parsed, response

    async def sign_in(self, keypair: Any) -> tuple[str, str]:
        """Sign in with the payout key `keypair`: (session cookie, CSRF token)."""
        status, made, _ = await self.call(
            "POST", "/api/session/challenge", {"address": keypair.public_key}
        )
        assert status == 200, made
        signature = keypair.sign_message(made["message"])
        import base64

        status, body, response = await self.call(
            "POST",
            "/api/session",
            {
                "challenge_id": made["challenge_id"],
                "signature": base64.b64encode(signature).decode(),
            },
        )
        assert status == 200, body
        return response.cookies[COOKIE].value, body["csrf_token"]


def client_ssl(ca: DevPki) -> ssl.SSLContext:
    """A browser's view: trusts the development CA, checks the host name."""
    return ssl.create_default_context(cadata=ca.ca_pem.decode())


async def start_web(
    stage: PoolStage,
    *,
    per_ip: int = 1000,
    per_address: int = 1000,
    challenge_seconds: int = 300,
    view_seconds: float = 0.0,
) -> WebServer:
    assert stage.server is not None
    stage.pki.server(WEB_SERVER)
    return await start_web_server(
        host="127.0.0.1",
        port=0,
        certs=stage.pki.files,
        server_name=WEB_SERVER,
        pool=PoolReader(
            f"127.0.0.1:{stage.server.port}",
            stage.pki.client(FARMER_WEB),
            stage.pki.ca_pem,
            server_name=POOL_SERVER,
            view_seconds=view_seconds,
        ),
        sign_in=SignIn(challenge_seconds, 3600),
        per_ip_per_minute=per_ip,
        per_address_per_minute=per_address,
    )


@pytest.fixture
async def web(pool: PoolStage, request: pytest.FixtureRequest) -> AsyncIterator[WebStage]:  # noqa: F811
    """The web server in front of the pool; its options by indirect parametrization."""
    options: dict[str, Any] = getattr(request, "param", {})
    server = await start_web(pool, **options)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(pool.pki)))
    try:
        yield WebStage(pool, server, http)
    finally:
        await http.close()
        await server.stop()
