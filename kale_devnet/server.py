"""The devnet's HTTP server: Stellar RPC at `/`, friendbot, `/devnet` info and admin.

Start it in-process (`async with DevnetServer(config) as devnet: ...`, port 0 picks a
free port) or standalone with `kale-pool devnet`. Admin JSON-RPC methods (`devnet_*`)
close ledgers on demand, move the clock, set faults, and pause, unpause or upgrade the
farm (its homesteader's controls); they are never faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from stellar_sdk import StrKey

from kale_devnet import persist
from kale_devnet.chain import Chain, FriendbotBusy, LedgerRecord
from kale_devnet.config import DevnetConfig
from kale_devnet.faults import FaultInjector
from kale_devnet.network import PROTOCOL_VERSION
from kale_devnet.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    RpcError,
    RpcService,
)

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
FRIENDBOT_WAIT_LEDGERS = 10


class _LoseResponse(Exception):
    """The request was processed; its answer must never reach the client."""


class _InjectedHttpError(Exception):
    """Answer with a plain HTTP error, as a proxy in front of an RPC node might."""


def _answer(req_id: Any, result_json: str) -> str:
    """A JSON-RPC answer around a result already encoded as JSON."""
    return f'{{"jsonrpc": "2.0", "id": {json.dumps(req_id)}, "result": {result_json}}}'


def _json_text(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def _rpc_error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


class DevnetServer:
    """A devnet chain behind an aiohttp server."""

    def __init__(self, config: DevnetConfig | None = None) -> None:
        self.config = config or DevnetConfig()
        self.config.validate()
        # With a state file, the store journals every change (persist.Store).
        self._store: persist.Store | None = None
        if self.config.state_path is not None:
            self._store = persist.Store.open(self.config, self.config.state_path)
            self.chain = self._store.chain
        else:
            self.chain = Chain(self.config)
        self.faults = FaultInjector(self.config.faults)
        self.rpc = RpcService(self.chain, lambda: self.url, self._health_problem)
        self._runner: web.AppRunner | None = None
        self._closer: asyncio.Task[None] | None = None
        self._port = self.config.port
        self._last_close_wall = time.time()
        self._closed = asyncio.Condition() if _has_loop() else None
        self._admin: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "devnet_closeLedger": self._admin_close,
            "devnet_advanceTime": self._admin_advance,
            "devnet_setFaults": self._admin_set_faults,
            "devnet_getFaults": self._admin_get_faults,
            "devnet_info": self._admin_info,
            "devnet_setFarmPaused": self._admin_set_farm_paused,
            "devnet_upgradeFarm": self._admin_upgrade_farm,
        }

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self._handle_rpc)
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/friendbot", self._handle_friendbot)
        app.router.add_get("/devnet", self._handle_info)
        app.router.add_get("/devnet/faults", self._handle_get_faults)
        app.router.add_post("/devnet/faults", self._handle_set_faults)
        return app

    async def start(self) -> None:
        self._closed = asyncio.Condition()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self._port = int(addresses[0][1])
        self._last_close_wall = time.time()
        if not self.config.manual:
            self._closer = asyncio.create_task(self._auto_close())

    async def stop(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer
            self._closer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            await asyncio.to_thread(self._store.wait)
            self._store.close()

    async def __aenter__(self) -> DevnetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def save(self) -> None:
        """Snapshot the chain now (when a state file is configured)."""
        if self._store is not None:
            self._store.snapshot()

    def _record(self) -> None:
        # Journaled (and fsynced) on the loop, before anything can see the change: a
        # ledger reported closed is on disk.
        if self._store is not None:
            self._store.record()

    # ---- ledgers ---------------------------------------------------------------------

    def close_ledger(self, close_time: int | None = None, *, journal: bool = True) -> LedgerRecord:
        """Close one ledger now (journaled when a state file is configured; `journal`
        False leaves that to the caller, before it reports the close)."""
        record = self.chain.close_ledger(close_time)
        self._last_close_wall = time.time()
        if journal:
            self._record()
        if self._closed is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return record

    async def _notify(self) -> None:
        assert self._closed is not None
        async with self._closed:
            self._closed.notify_all()

    async def wait_for_ledger(self, seq: int, wait_seconds: float) -> bool:
        """Wait until ledger `seq` has closed (auto mode)."""
        assert self._closed is not None
        deadline = time.monotonic() + wait_seconds
        async with self._closed:
            while self.chain.latest.seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), left)
        return True

    async def _auto_close(self) -> None:
        loop = asyncio.get_running_loop()
        interval = float(self.config.ledger_seconds)
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if self.faults.is_stalled():
                continue
            try:
                self.close_ledger()
            except Exception:  # keep the chain alive; the log says what went wrong
                log.exception("ledger close failed")

    def _health_problem(self) -> str | None:
        if self.config.manual:
            return None
        limit = max(30.0, 3.0 * self.config.ledger_seconds)
        latency = time.time() - self._last_close_wall
        if latency > limit:
            return (
                f"latency ({latency:.0f}s) since last known ledger closed is too high "
                f"(>{limit:.0f}s)"
            )
        return None

    # ---- JSON-RPC --------------------------------------------------------------------

    async def _handle_rpc(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return web.json_response(_rpc_error(None, PARSE_ERROR, "Parse error"))
        try:
            if isinstance(payload, list):
                if not payload:
                    return web.json_response(_rpc_error(None, INVALID_REQUEST, "empty batch"))
                answers = [await self._one(item) for item in payload]
                return _json_text("[" + ",".join(answers) + "]")
            return _json_text(await self._one(payload))
        except _InjectedHttpError as exc:
            return web.Response(status=503, text=f"{exc}\n")
        except _LoseResponse:
            if self.faults.config.lost_send_mode == "http":
                return web.Response(status=504, text="upstream timed out (injected fault)\n")
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError from None

    async def _one(self, item: Any) -> str:
        """One request's answer as JSON text (results are encoded by the RPC service,
        which keeps the large ones it answers again and again)."""
        if not isinstance(item, dict):
            return json.dumps(_rpc_error(None, INVALID_REQUEST, "invalid request"))
        req_id = item.get("id")
        method = item.get("method")
        if item.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return json.dumps(_rpc_error(req_id, INVALID_REQUEST, "invalid request"))
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int)):
            return json.dumps(_rpc_error(None, INVALID_REQUEST, "invalid request id"))
        params = item.get("params")
        admin = self._admin.get(method)
        if admin is not None:
            try:
                return _answer(req_id, json.dumps(await admin(_admin_params(params))))
            except RpcError as exc:
                return json.dumps(_rpc_error(req_id, exc.code, exc.message))
        delay = self.faults.latency(method)
        if delay:
            await asyncio.sleep(delay)
        if method in self.rpc.methods and self.faults.should_fail(method):
            if self.faults.config.error_kind == "http":
                raise _InjectedHttpError("service unavailable (injected fault)")
            return json.dumps(_rpc_error(req_id, INTERNAL_ERROR, "internal error (injected fault)"))
        try:
            if method == "sendTransaction":
                result = self.rpc.call(method, params)
                if result.get("status") == "PENDING" and self.faults.lose_send():
                    raise _LoseResponse
                text = json.dumps(result)
            else:
                text = self.rpc.call_json(method, params)
        except RpcError as exc:
            return json.dumps(_rpc_error(req_id, exc.code, exc.message))
        except _LoseResponse:
            raise
        except Exception:
            log.exception("internal error in %s", method)
            return json.dumps(_rpc_error(req_id, INTERNAL_ERROR, "internal error"))
        return _answer(req_id, text)

    # ---- admin -----------------------------------------------------------------------

    async def _admin_close(self, params: dict[str, Any]) -> dict[str, Any]:
        count = params.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise RpcError(INVALID_PARAMS, "count must be an integer from 1 to 10000")
        if self.faults.is_stalled():
            raise RpcError(INTERNAL_ERROR, "ledger closing is stalled (injected fault)")
        applied: list[str] = []
        record = self.chain.latest
        try:
            for _ in range(count):
                record = self.close_ledger(journal=False)
                applied.extend(record.tx_hashes)
        finally:
            self._record()  # one journal line (and fsync) for the whole run of closes
        return {"sequence": record.seq, "closeTime": record.close_time, "applied": applied}

    async def _admin_advance(self, params: dict[str, Any]) -> dict[str, Any]:
        seconds = params.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise RpcError(INVALID_PARAMS, "seconds must be a non-negative integer")
        next_close = self.chain.advance_time(seconds)
        self._record()
        return {"nextCloseTime": next_close}

    async def _admin_set_faults(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.faults.update(params).to_json()
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

    async def _admin_get_faults(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.faults.config.to_json()

    async def _admin_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.info()

    async def _admin_set_farm_paused(self, params: dict[str, Any]) -> dict[str, Any]:
        paused = params.get("paused")
        if not isinstance(paused, bool):
            raise RpcError(INVALID_PARAMS, "paused must be true or false")
        changed = self.chain.set_farm_paused(paused)
        self._record()
        return {"paused": paused, "changed": changed}

    async def _admin_upgrade_farm(self, params: dict[str, Any]) -> dict[str, Any]:
        if params:
            raise RpcError(INVALID_PARAMS, "devnet_upgradeFarm takes no parameters")
        wasm_hash, version = self.chain.upgrade_farm()
        self._record()
        return {"wasmHash": wasm_hash.hex(), "version": version}

    def info(self) -> dict[str, Any]:
        ident = self.chain.identity
        return {
            "network_passphrase": ident.network_passphrase,
            "farm_contract_id": ident.farm_contract_id,
            "asset_code": ident.asset_code,
            "asset_issuer": ident.asset_issuer,
            "sac_contract_id": ident.sac_contract_id,
            "homesteader": ident.homesteader,
            "farm_wasm_hash": self.chain.farm_wasm_hash().hex(),
            "farm_paused": self.chain.farm_paused(),
            "ledger_seconds": self.config.ledger_seconds,
            "block_seconds": self.config.block_seconds,
            "protocol_version": PROTOCOL_VERSION,
            "rpc_url": self.url,
            "friendbot_url": f"{self.url}/friendbot",
            "manual_close": self.config.manual,
            "latest_ledger": self.chain.latest.seq,
            "latest_ledger_close_time": self.chain.latest.close_time,
            "next_close_time": self.chain.next_close_time(),
            "pending_transactions": len(self.chain.pending),
        }

    # ---- plain HTTP ------------------------------------------------------------------

    async def _handle_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.config.to_json())

    async def _handle_root(self, request: web.Request) -> web.Response:
        """Someone opened the RPC URL in a browser or with curl: say what it speaks."""
        response = _problem(
            405,
            "Method Not Allowed",
            "this is a Stellar RPC endpoint: POST JSON-RPC 2.0 requests here (getHealth, "
            "getNetwork, sendTransaction, ...); GET /devnet for this network's ids and clock, "
            "GET /friendbot?addr=G... to fund an account",
        )
        response.headers["Allow"] = "POST"
        return response

    async def _handle_set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault settings")
            return web.json_response(self.faults.update(changes).to_json())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _handle_friendbot(self, request: web.Request) -> web.Response:
        addr = request.query.get("addr", "")
        if not StrKey.is_valid_ed25519_public_key(addr):
            return _problem(400, "Bad Request", "addr must be a valid account id (G...)")
        kale_raw = request.query.get("kale", "0")
        if not kale_raw.isdigit() or len(kale_raw) > 19 or int(kale_raw) > 2**63 - 1:
            return _problem(400, "Bad Request", "kale must be a whole number of stroops")
        kale = int(kale_raw)
        for _ in range(FRIENDBOT_WAIT_LEDGERS):
            try:
                outcome = self.chain.friendbot(addr, kale)
                break
            except FriendbotBusy as exc:
                if self.config.manual:
                    return _problem(503, "Service Unavailable", str(exc))
                await self.wait_for_ledger(
                    self.chain.latest.seq + 1, 2 * self.config.ledger_seconds
                )
            except ValueError as exc:
                return _problem(400, "Bad Request", str(exc))
        else:
            return _problem(503, "Service Unavailable", "friendbot is busy")
        if outcome.status != "PENDING":
            return _problem(500, "Transaction Failed", f"friendbot transaction {outcome.status}")
        if self.config.manual:
            # Nothing applies until the next ledger closes on request.
            return web.json_response({"hash": outcome.hash, "status": "PENDING"})
        target = self.chain.latest.seq + 1
        while outcome.hash not in self.chain.txs:
            if not await self.wait_for_ledger(target, 3 * self.config.ledger_seconds + 5):
                return _problem(504, "Timeout", "the funding transaction was not applied in time")
            if (
                outcome.hash in self.chain.txs
                or self.chain.latest.seq >= target + FRIENDBOT_WAIT_LEDGERS
            ):
                break
            target = self.chain.latest.seq + 1
        tx = self.chain.txs.get(outcome.hash)
        if tx is None:
            return _problem(500, "Transaction Failed", "the funding transaction was dropped")
        answer = {
            "hash": tx.hash,
            "ledger": tx.ledger,
            "successful": tx.successful,
            "envelope_xdr": tx.envelope,
            "result_xdr": tx.result,
            "result_meta_xdr": tx.meta,
        }
        return web.json_response(answer, status=200 if tx.successful else 400)


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def _admin_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "expected an object of named parameters")
    return params


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def serve_forever(
    config: DevnetConfig, ready: Callable[[DevnetServer], None] | None = None
) -> None:
    """Run a devnet until cancelled."""
    async with DevnetServer(config) as server:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()


class DevnetThread:
    """A devnet on its own event loop in a background thread (for synchronous callers)."""

    def __init__(self, config: DevnetConfig) -> None:
        self.config = config
        self.server: DevnetServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> DevnetServer:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self.server = DevnetServer(self.config)
                loop.run_until_complete(self.server.start())
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                loop.close()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="kale-pool-devnet", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.server is not None
        return self.server

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the devnet's loop and return its result."""
        assert self._loop is not None

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = None

    def __enter__(self) -> DevnetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
