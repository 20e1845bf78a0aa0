"""The everyday operator commands: `blocks`, `farmers`, `poolers`, `farmer payout`,
`farmer payout-address`, `farmer leave`. Each is one or a few PoolService calls through
`OperatorClient` (the pool's address from the running stack's state, else
`pool_listen`), printed as a table
(amounts in KALE) or, with `--csv`, as plain rows (amounts in stroops).

A pool that cannot be reached, or a refusal, is a `CommandError`: one line for the
command line to print, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from rich.console import Console
from stellar_sdk import Keypair

from kalepool import wire
from kalepool.app.operator import OperatorClient
from kalepool.app.tables import (
    BLOCK_FIELDS,
    FARMER_FIELDS,
    POOLER_FIELDS,
    FailureNote,
    block_failures,
    block_row,
    blocks_table,
    farmer_row,
    farmers_table,
    payout_summary,
    pooler_row,
    poolers_table,
    write_csv,
)
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2

T = TypeVar("T")

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CommandError(Exception):
    """A command's failure, in one sentence; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.unreachable = unreachable  # the pool did not answer: an outcome is unknown


def rpc_error(error: grpc.aio.AioRpcError, address: str) -> CommandError:
    """One line for a failed call: the pool is not there, or what it said."""
    code = error.code()
    detail = (error.details() or code.name).strip().splitlines()[0]
    if code in _UNREACHABLE:
        return CommandError(
            f"cannot reach the pool at {address} ({detail}); is `kale-pool up` running?",
            unreachable=True,
        )
    return CommandError(f"{detail} ({code.name.lower()})")


def with_pool(settings: Settings, body: Callable[[OperatorClient], Awaitable[T]]) -> T:
    """Run `body` with an operator client; gRPC failures become a `CommandError`."""

    async def main() -> T:
        async with OperatorClient(settings) as op:
            try:
                return await body(op)
            except grpc.aio.AioRpcError as error:
                raise rpc_error(error, op.address) from None

    return asyncio.run(main())


def _out() -> Console:
    """Standard output. Off a terminal (a pipe, a file) rich would assume 80 columns and
    squeeze the tables; there it takes COLUMNS, or room enough for every column."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


# --- listing ------------------------------------------------------------------------------


@dataclass
class Blocks:
    """What `blocks` shows: the summaries (with their opening time) and failures."""

    summaries: list[pool_pb2.BlockSummary]
    failures: dict[int, list[FailureNote]]


async def read_blocks(op: OperatorClient, last: int) -> Blocks:
    """The last `last` blocks the pool took part in, newest first, each completed by its
    GetBlock (the opening time on chain and the failures' causes)."""
    summaries: list[pool_pb2.BlockSummary] = []
    token = ""
    while len(summaries) < last:
        page = await op.pool.ListBlocks(
            pool_pb2.ListBlocksRequest(
                pagination=common_pb2.Pagination(page_size=min(500, last), page_token=token)
            ),
            timeout=op.timeout,
        )
        summaries.extend(page.blocks)
        token = page.next_page_token
        if not token:
            break
    summaries = summaries[:last]
    details = await asyncio.gather(
        *(
            op.pool.GetBlock(
                pool_pb2.GetBlockRequest(block_index=s.block_index), timeout=op.timeout
            )
            for s in summaries
        )
    )
    shown = [d.block for d in details]  # the list's summary and the block's opening time
    return Blocks(shown, {d.block.block_index: block_failures(d) for d in details})


async def list_farmers(
    op: OperatorClient, pooler_id: str = "", status: str | None = None
) -> list[pool_pb2.Farmer]:
    """Every farmer (of one pooler, with one status), oldest first."""
    farmers: list[pool_pb2.Farmer] = []
    token = ""
    while True:
        page = await op.pool.ListFarmers(
            pool_pb2.ListFarmersRequest(
                pagination=common_pb2.Pagination(page_size=500, page_token=token),
                pooler_id=pooler_id,
                status=wire.farmer_status_of_label(status)
                if status
                else common_pb2.FARMER_STATUS_UNSPECIFIED,
            ),
            timeout=op.timeout,
        )
        farmers.extend(page.farmers)
        token = page.next_page_token
        if not token:
            return farmers


async def list_poolers(op: OperatorClient) -> list[pool_pb2.Pooler]:
    """Every pooler, oldest first."""
    poolers: list[pool_pb2.Pooler] = []
    token = ""
    while True:
        page = await op.pool.ListPoolers(
            pool_pb2.ListPoolersRequest(
                pagination=common_pb2.Pagination(page_size=500, page_token=token)
            ),
            timeout=op.timeout,
        )
        poolers.extend(page.poolers)
        token = page.next_page_token
        if not token:
            return poolers


def show_blocks(settings: Settings, last: int, csv: bool) -> None:
    """`kale-pool blocks`."""
    if last < 1:
        raise CommandError("--last must be 1 or more", code=2)
    blocks = with_pool(settings, lambda op: read_blocks(op, last))
    if csv:
        write_csv([block_row(s) for s in blocks.summaries], sys.stdout, BLOCK_FIELDS)
    elif not blocks.summaries:
        _out().print("the pool has taken part in no block yet")
    else:
        _out().print(blocks_table(blocks.summaries, blocks.failures, title=None))


def show_farmers(settings: Settings, pooler_id: str, status: str | None, csv: bool) -> None:
    """`kale-pool farmers`."""

    async def body(op: OperatorClient) -> tuple[list[pool_pb2.Farmer], dict[str, str]]:
        farmers = await list_farmers(op, pooler_id, status)
        return farmers, {p.pooler_id: p.name for p in await list_poolers(op)}

    farmers, names = with_pool(settings, body)
    if csv:
        write_csv([farmer_row(f) for f in farmers], sys.stdout, FARMER_FIELDS)
    elif not farmers:
        _out().print("no farmers" + (" match" if pooler_id or status else " yet"))
    else:
        _out().print(farmers_table(farmers, names, title=None))


def show_poolers(settings: Settings, csv: bool) -> None:
    """`kale-pool poolers`: each pooler with its statistics and last heartbeat."""

    async def body(
        op: OperatorClient,
    ) -> tuple[list[pool_pb2.Pooler], dict[str, pool_pb2.GetPoolerStatsResponse]]:
        poolers = await list_poolers(op)
        stats = await asyncio.gather(
            *(
                op.pool.GetPoolerStats(
                    pool_pb2.GetPoolerStatsRequest(pooler_id=p.pooler_id), timeout=op.timeout
                )
                for p in poolers
            )
        )
        return poolers, {p.pooler_id: s for p, s in zip(poolers, stats, strict=True)}

    poolers, stats = with_pool(settings, body)
    if csv:
        write_csv(
            [pooler_row(p, stats[p.pooler_id]) for p in poolers],
            sys.stdout,
            POOLER_FIELDS,
        )
    elif not poolers:
        _out().print("no poolers yet")
    else:
        _out().print(poolers_table(poolers, stats, title=None))


# --- money --------------------------------------------------------------------------------


def payout(settings: Settings, farmer_id: str, amount_stroops: int, key: str | None) -> bool:
    """`kale-pool farmer payout`: ask for a payout and say how it stands; whether it did
    not fail. A pending one is followed by asking again with the same key."""
    key = key or f"cli-{uuid.uuid4()}"
    request = pool_pb2.RequestPayoutRequest(
        farmer_id=farmer_id, amount_stroops=amount_stroops, idempotency_key=key
    )

    async def body(op: OperatorClient) -> pool_pb2.RequestPayoutResponse:
        return await op.pool.RequestPayout(request, timeout=op.timeout)

    try:
        got = with_pool(settings, body).payout
    except CommandError as error:
        if error.unreachable:
            # The payout may have been made: asking again with this key never pays twice.
            raise CommandError(
                f"{error}; to ask again safely: kale-pool farmer payout {farmer_id} --key {key}"
            ) from None
        raise
    out = _out()
    out.print(payout_summary(got), markup=False, highlight=False, soft_wrap=True)
    status = got.transaction.status
    if status == common_pb2.TX_STATUS_PENDING:
        out.print(
            "the transfer is not final yet; follow it (this never pays twice): "
            f"kale-pool farmer payout {farmer_id} --key {key}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif status != common_pb2.TX_STATUS_SUCCESS:
        out.print("the farmer's balance is restored; nothing was sent", highlight=False)
        return False
    return True


def parse_signature(text: str) -> bytes:
    """A signature as people paste it: base64 (what SEP-53 tools print) or 128 hex digits;
    ValueError with one sentence otherwise."""
    cleaned = text.strip()
    try:
        raw = (
            bytes.fromhex(cleaned)
            if len(cleaned) == 128
            else base64.b64decode(cleaned, validate=True)
        )
    except ValueError:
        raise ValueError("the signature must be base64 or hex") from None
    if len(raw) != 64:
        raise ValueError(f"an ed25519 signature is 64 bytes, this one is {len(raw)}")
    return raw


def payout_address(
    settings: Settings,
    farmer_id: str,
    new_address: str,
    *,
    challenge_id: str | None = None,
    signature: bytes | None = None,
    secret: str | None = None,
) -> None:
    """`kale-pool farmer payout-address`: without a signature, ask for a challenge and
    print the text the farmer's current payout key must sign; with `challenge_id` and
    `signature`, hand them to the pool (the wallet decides); with `secret` (devnet demos:
    the current payout address's secret key), do both, signing here. The secret is never
    printed, logged or sent."""
    keypair = None
    if secret is not None:
        try:
            keypair = Keypair.from_secret(secret)
        except Exception:  # the SDK's message may quote what it was given
            raise CommandError("the secret given is not a Stellar secret key (S…)", 2) from None

    async def change(
        op: OperatorClient, challenge: str, signed: bytes
    ) -> pool_pb2.ChangeFarmerPayoutAddressResponse:
        return await op.pool.ChangeFarmerPayoutAddress(
            pool_pb2.ChangeFarmerPayoutAddressRequest(
                farmer_id=farmer_id,
                challenge_id=challenge,
                new_payout_address=new_address,
                signature=signed,
            ),
            timeout=op.timeout,
        )

    async def body(op: OperatorClient) -> pool_pb2.ChangeFarmerPayoutAddressResponse | None:
        if challenge_id is not None and signature is not None:
            return await change(op, challenge_id, signature)
        issued = await op.pool.NewFarmerPayoutChallenge(
            pool_pb2.NewFarmerPayoutChallengeRequest(
                farmer_id=farmer_id, new_payout_address=new_address
            ),
            timeout=op.timeout,
        )
        if keypair is None:
            _print_challenge(farmer_id, new_address, issued)
            return None
        if keypair.public_key != issued.signer_address:
            raise CommandError(
                f"the secret given is {keypair.public_key}'s, but the farmer's current payout"
                f" address {issued.signer_address} must sign",
                2,
            )
        return await change(op, issued.challenge_id, keypair.sign_message(issued.message))

    changed = with_pool(settings, body)
    if changed is not None:
        _out().print(
            f"farmer {farmer_id} pays out to {changed.farmer.payout_address} now"
            f" (was {changed.previous_payout_address})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _print_challenge(
    farmer_id: str, new_address: str, issued: pool_pb2.NewFarmerPayoutChallengeResponse
) -> None:
    expires = issued.expires_at.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    out = _out()
    for line in (
        f"challenge {issued.challenge_id}, to be signed by {issued.signer_address}"
        f" before {expires} (SEP-53: a Stellar Signed Message), exactly this text:",
        "",
        issued.message,
        "",
        "then: kale-pool farmer payout-address"
        f" {farmer_id} {new_address} --challenge {issued.challenge_id} --signature SIGNATURE",
    ):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def leave(settings: Settings, farmer_id: str) -> None:
    """`kale-pool farmer leave`: stop planting the farmer, and once its pails are harvested
    send everything to its payout address and merge its account."""

    async def body(op: OperatorClient) -> pool_pb2.LeavePoolResponse:
        return await op.pool.LeavePool(
            pool_pb2.LeavePoolRequest(farmer_id=farmer_id), timeout=op.timeout
        )

    got = with_pool(settings, body)
    f = got.farmer
    again = f"run `kale-pool farmer leave {farmer_id}` again (safe to repeat)"
    close = got.close_transaction
    if f.status == common_pb2.FARMER_STATUS_DEPARTED:
        text = f"farmer {farmer_id} departed"
        if close.tx_hash:
            text += (
                f": its KALE and XLM went to {f.payout_address} and its account was merged"
                f" (tx {close.tx_hash}, ledger {close.ledger})"
            )
    elif got.pending_harvests:
        text = (
            f"farmer {farmer_id} is leaving: planted no more; {got.pending_harvests} pail(s)"
            f" wait for their harvest, then {again} to pay out and close its account"
        )
    elif close.tx_hash:
        text = f"farmer {farmer_id} is leaving: the closing transaction {close.tx_hash} is pending;"
        text += f" {again} to follow it"
    else:
        text = f"farmer {farmer_id} is leaving: its last payout is not final yet; {again}"
    _out().print(text, markup=False, highlight=False, soft_wrap=True)


# --- the report ---------------------------------------------------------------------------


def report(settings: Settings, out: Path, last: int) -> None:
    """`kale-pool report`: read the pool's history and write CSV files and charts."""
    try:
        import matplotlib  # noqa: F401  (the charts' renderer: an optional extra)
    except ImportError:
        raise CommandError(
            "kale-pool report draws its charts with matplotlib, which is not installed:"
            " pip install 'kale-pool[report]'"
        ) from None
    from kalepool.app.report import run_report

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot write to {out}: {error.strerror or error}") from None
    history, written = with_pool(settings, lambda op: run_report(op, out, last))
    entries = sum(len(e) for e in history.ledger.values())
    console = _out()
    for path in written:
        console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"{len(history.blocks)} blocks, {len(history.farmers)} farmers, {entries} ledger entries",
        highlight=False,
    )
