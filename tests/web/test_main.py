"""`python -m farmer_web`: one line and exit 2 without its address or certificates; with
them, it serves the page over HTTPS and prints its URL, and a pool it cannot reach is a
503 that names nothing internal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from kalepool.tls import DevPki, ensure_dev_identities
from tests.web.conftest import client_ssl


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    env.pop("DATABASE_URL", None)
    env["KALE_POOL_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


async def _run(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "farmer_web", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


async def test_without_an_address_or_certificates_it_says_so(tmp_path: Path) -> None:
    code, err = await _run(_env(tmp_path))
    assert (code, err.strip()) == (2, "farmer web: set KALE_POOL_WEB_LISTEN to host:port")
    code, err = await _run(_env(tmp_path, KALE_POOL_WEB_LISTEN="127.0.0.1:0"))
    assert code == 2
    assert err.startswith("farmer web: certificate files missing:"), err
    assert "Traceback" not in err


@pytest.mark.timeout(120)
async def test_it_serves_the_page_over_https_and_prints_its_url(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "data" / "certs")
    ensure_dev_identities(pki)
    env = _env(
        tmp_path,
        KALE_POOL_WEB_LISTEN="127.0.0.1:0",
        KALE_POOL_WEB_POOL_ADDRESS="127.0.0.1:1",  # no pool listens there
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "farmer_web", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line.startswith("farmers' web page: https://127.0.0.1:"), line
        url = line.split(": ", 1)[1]
        connector = aiohttp.TCPConnector(ssl=client_ssl(pki))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(url) as page:
                assert page.status == 200
                assert "<title>kale-pool</title>" in await page.text()
            async with http.get(f"{url}api/pool") as pool:
                assert pool.status == 503
                body = await pool.json()
                assert body == {"error": "the pool cannot be reached now; try again later"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
