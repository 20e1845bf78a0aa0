"""The work submitter: sends `work(farmer, hash, nonce)` for each mined result.

`work` needs no signature from the farmer (the hash binds it), so the pooler pays the
fee from accounts of its own. One account can have only one transaction pending at a
time (a second is answered TRY_AGAIN_LATER), so the pooler holds several *channel
accounts*: a :class:`ChannelPool` lends each submission an account with nothing in
flight and keeps the accounts' sequence numbers itself, so N farmers' works go out in
parallel, one account each.

Each submission goes through the chain client's safe submit (a time bound, the same
envelope resent until it applies or provably cannot) and ends in a :class:`WorkResult`:
the nonce, hash and zeros, the gap the contract returned and the transaction hash, or
the failure with whose fault it was (`kalepool.chain.attribute_fault`): work after the
next block opened (the farm's PailMissing, #9) is the pooler's, an unreachable RPC the
chain's. A result whose fate is unknown (PENDING) keeps its signed envelope, and
:meth:`WorkSubmitter.settle` follows it by hash (resending the same envelope while it can
still apply) until the chain settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from enum import StrEnum

from stellar_sdk import Account, Keypair

from kalepool import wire
from kalepool.chain import (
    AccountNotFoundError,
    ChainClient,
    ChainError,
    ChainUnavailableError,
    ContractError,
    Fault,
    SignedTx,
    TxKind,
    TxOutcome,
    TxStatus,
    attribute_fault,
    build_work,
    read_account,
    reconcile,
    sign,
    submit,
)
from kalepool.chain.client import describe_failure, is_transient
from kalepool.chain.submit import Observer
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock
from pooler_agent.work_manager import MinedWork

log = logging.getLogger(__name__)


# --- channel accounts ------------------------------------------------------------------


@dataclass
class ChannelAccount:
    """One of the pooler's fee accounts, and what the pool knows of its sequence number."""

    keypair: Keypair
    account: Account | None = None  # loaded lazily; None or `stale` means read it again
    stale: bool = False
    busy: bool = False
    blocked_until: float | None = None  # chain time: an envelope may be in flight until then

    @property
    def address(self) -> str:
        return self.keypair.public_key


class ChannelPool:
    """Lends out channel accounts, one transaction in flight per account.

    `lease()` waits until an account is free. After an outcome that leaves the sequence
    number in doubt, the account is read again before its next use; after one whose
    envelope may still be in flight (the chain stopped answering), the account is held
    back until the envelope's time bound has passed on the chain's clock, so the old
    envelope and the next one can never both apply.
    """

    def __init__(
        self,
        client: ChainClient,
        keypairs: Sequence[Keypair],
        *,
        clock: ChainClock | None = None,
        recheck_seconds: float = 1.0,
    ) -> None:
        if not keypairs:
            raise ValueError("at least one channel account is needed to submit work")
        addresses = [kp.public_key for kp in keypairs]
        if len(set(addresses)) != len(addresses):
            raise ValueError("channel accounts must be distinct")
        if any(not kp.can_sign() for kp in keypairs):
            raise ValueError("every channel account needs its secret key")
        self.client = client
        self.clock = clock
        self.recheck_seconds = recheck_seconds
        self._channels = [ChannelAccount(kp) for kp in keypairs]
        self._changed = asyncio.Condition()
        self.peak_in_flight = 0  # the most accounts lent out at once (statistics)

    @classmethod
    def from_secrets(
        cls,
        client: ChainClient,
        secrets: Iterable[str],
        *,
        clock: ChainClock | None = None,
        recheck_seconds: float = 1.0,
    ) -> ChannelPool:
        """A pool from secret keys (S…); a bad one is named by position, never echoed."""
        keypairs = []
        for position, secret in enumerate(secrets, start=1):
            try:
                keypairs.append(Keypair.from_secret(secret.strip()))
            except Exception:
                raise ValueError(f"channel account {position}: not a valid secret key") from None
        return cls(client, keypairs, clock=clock, recheck_seconds=recheck_seconds)

    @property
    def size(self) -> int:
        return len(self._channels)

    @property
    def addresses(self) -> list[str]:
        return [ch.address for ch in self._channels]

    @property
    def in_flight(self) -> int:
        return sum(1 for ch in self._channels if ch.busy)

    def _channel(self, address: str) -> ChannelAccount | None:
        return next((ch for ch in self._channels if ch.address == address), None)

    def hold(self, address: str, until: float) -> None:
        """An envelope of this account may be in flight until chain time `until` (one
        journaled before a restart): lend the account only after that, and read it again."""
        channel = self._channel(address)
        if channel is not None:
            channel.stale = True
            channel.blocked_until = max(channel.blocked_until or until, until)

    def settled(self, address: str) -> None:
        """The envelope that held this account back settled (applied or can no longer
        apply): lend it again at once, after reading its sequence number."""
        channel = self._channel(address)
        if channel is not None:
            channel.stale = True
            channel.blocked_until = None

    def _usable(self, channel: ChannelAccount) -> bool:
        if channel.busy:
            return False
        if channel.blocked_until is None:
            return True
        if (
            self.clock is not None
            and self.clock.synced
            and self.clock.now() > channel.blocked_until
        ):
            channel.blocked_until = None
            return True
        return False

    async def _acquire(self) -> ChannelAccount:
        async with self._changed:
            while True:
                channel = next((ch for ch in self._channels if self._usable(ch)), None)
                if channel is not None:
                    break
                # Woken by a release, or after a while: a held-back account may be usable.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.recheck_seconds)
            channel.busy = True
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return channel

    async def _release(self, channel: ChannelAccount) -> None:
        async with self._changed:
            channel.busy = False
            self._changed.notify()

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[ChannelAccount]:
        """An account with nothing in flight and a known sequence number, for one submission."""
        channel = await self._acquire()
        try:
            if channel.account is None or channel.stale:
                state = await read_account(self.client, channel.address)
                if state is None:
                    raise AccountNotFoundError(channel.address)
                channel.account = Account(channel.address, state.sequence)
                channel.stale = False
            yield channel
        finally:
            await self._release(channel)


# --- results ---------------------------------------------------------------------------


class WorkStatus(StrEnum):
    """Where a farmer's work stands (the proto's EventStatus)."""

    SUCCESS = "success"  # landed: the gap is the contract's
    FAILED = "failed"  # will not land (or landed and failed)
    PENDING = "pending"  # sent, fate unknown: reconcile by the transaction hash


class FailureCode(StrEnum):
    """Why work failed (the names of the proto's FailureCode)."""

    WORK_LATE = "WORK_LATE"  # mining was cancelled: the next block opened first
    MINER_FAILED = "MINER_FAILED"  # the agent stopped before the work was sent
    PAIL_MISSING = "PAIL_MISSING"  # farm #9: the block ended (late work) or no plant
    HASH_INVALID = "HASH_INVALID"  # farm #13
    CONTRACT_ERROR = "CONTRACT_ERROR"  # another Error(Contract, #N)
    TX_FAILED = "TX_FAILED"  # refused or failed outside the contract
    TX_EXPIRED = "TX_EXPIRED"  # the time bound passed before a ledger included it
    CHAIN_UNAVAILABLE = "CHAIN_UNAVAILABLE"  # the RPC could not be reached
    FEE_ACCOUNT_UNAVAILABLE = "FEE_ACCOUNT_UNAVAILABLE"  # the channel account is missing


@dataclass(frozen=True, slots=True)
class WorkResult:
    """One farmer's work in one block: what was sent and what became of it."""

    assignment: Assignment
    status: WorkStatus
    nonce: int
    hash: bytes
    zeros: int
    hashes: int  # hashes the miner computed for this farmer
    gap: int | None = None  # the gap the contract returned
    tx_hash: str | None = None  # None when nothing was sent
    ledger: int | None = None
    channel: str | None = None  # the account that paid the fee
    submitted_at: float | None = None  # wall time (Unix) of the first send
    fault: Fault = Fault.NONE
    failure: FailureCode | None = None
    contract_error: int | None = None  # N of Error(Contract, #N)
    error_code: str | None = None  # e.g. "farm#9", "txBAD_SEQ"
    message: str | None = None  # one line for a person
    envelope: SignedTx | None = None  # the signed work transaction, to follow a pending one
    final: bool = False  # PENDING for good: the chain can no longer tell (nothing follows)

    @property
    def key(self) -> tuple[str, int]:
        """(farmer, block): one work per pail."""
        return self.assignment.key

    @property
    def farmer_address(self) -> str:
        return self.assignment.farmer_address

    @property
    def block_index(self) -> int:
        return self.assignment.block_index


def _failure_of(error_code: str | None, status: TxStatus | None) -> FailureCode:
    """The shared reading of a chain error code (`kalepool.wire.chain_failure_code`) in
    the words a work report uses: a cause it has no word for is a contract error, or
    else a failed transaction."""
    contract = wire.is_contract_code(error_code)
    code = wire.chain_failure_code(error_code, expired=status is TxStatus.EXPIRED and not contract)
    label = wire.failure_label(code)
    if label in FailureCode._value2member_map_:
        return FailureCode(label)
    return FailureCode.CONTRACT_ERROR if contract else FailureCode.TX_FAILED


# --- submitting ------------------------------------------------------------------------


WorkRecordHook = Callable[[MinedWork, SignedTx], Awaitable[None]]


class _NotJournaled(Exception):
    """The `record` hook failed, so the envelope was not sent."""


class WorkSubmitter:
    """Submits mined work from the channel pool and reports each farmer's result.

    `record(mined, signed)` runs before each envelope is first sent (the agent's journal,
    so a restart can reconcile by hash; if it raises, nothing is sent); `observe` sees
    every submission step.
    """

    def __init__(
        self,
        client: ChainClient,
        channels: ChannelPool,
        *,
        record: WorkRecordHook | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.client = client
        self.channels = channels
        self.record = record
        self.observe = observe

    async def submit_all(self, mined: Iterable[MinedWork]) -> list[WorkResult]:
        """Submit several works at once (as many in flight as there are channel accounts)."""
        return list(await asyncio.gather(*(self.submit(m) for m in mined)))

    async def submit(self, mined: MinedWork) -> WorkResult:
        """Submit one farmer's work and follow it to its end; never raises for a chain failure."""
        base = WorkResult(
            assignment=mined.assignment,
            status=WorkStatus.FAILED,
            nonce=mined.nonce,
            hash=mined.hash,
            zeros=mined.zeros,
            hashes=mined.hashes,
        )
        if not mined.sendable:
            return replace(
                base,
                status=WorkStatus.FAILED,
                fault=Fault.POOLER,
                failure=FailureCode.WORK_LATE if mined.block_closed else FailureCode.MINER_FAILED,
                message=f"not sent: {mined.cancelled}",
            )
        try:
            async with self.channels.lease() as channel:
                return await self._send(mined, channel, base)
        except AccountNotFoundError as exc:
            return replace(
                base,
                status=WorkStatus.FAILED,
                fault=Fault.POOLER,
                failure=FailureCode.FEE_ACCOUNT_UNAVAILABLE,
                message=str(exc),
            )
        except ChainUnavailableError as exc:  # reading the channel account
            return replace(
                base,
                status=WorkStatus.FAILED,
                fault=Fault.CHAIN,
                failure=FailureCode.CHAIN_UNAVAILABLE,
                message=str(exc),
            )

    async def _send(
        self, mined: MinedWork, channel: ChannelAccount, base: WorkResult
    ) -> WorkResult:
        assert channel.account is not None  # the lease loaded it
        farmer = mined.assignment.farmer_address
        sequence = channel.account.sequence
        try:
            tx = await build_work(
                self.client, farmer, mined.hash, mined.nonce, source=channel.account
            )
            signed = sign(tx, channel.keypair)
        except asyncio.CancelledError:
            channel.account.sequence = sequence
            raise
        except Exception as exc:
            # Nothing was sent: the sequence number the builder took is still free.
            channel.account.sequence = sequence
            return self._refused(exc, channel, base)
        submitted_at = time.time()
        record = self.record

        async def journal(tx: SignedTx) -> None:
            if record is not None:
                try:
                    await record(mined, tx)
                except Exception as exc:
                    raise _NotJournaled(describe_failure(exc)) from exc

        try:
            outcome = await submit(self.client, signed, record=journal, observe=self.observe)
        except _NotJournaled as exc:
            # Not sent: work that a crash could lose is not sent at all.
            channel.account.sequence = sequence
            log.error("work for %s not sent: the work journal cannot be written (%s)", farmer, exc)
            return replace(
                base,
                status=WorkStatus.FAILED,
                channel=channel.address,
                fault=Fault.POOLER,
                failure=FailureCode.MINER_FAILED,
                message=f"not sent: the work journal cannot be written ({exc})",
            )
        except Exception as exc:
            # The envelope may be in flight: hold the account back until it cannot apply.
            channel.stale = True
            channel.blocked_until = signed.max_time
            fault = attribute_fault(TxKind.WORK, exc)
            detail = str(exc) if isinstance(exc, ChainError) else describe_failure(exc)
            log.warning("work for %s: outcome unknown (%s)", farmer, detail)
            return replace(
                base,
                status=WorkStatus.PENDING,
                tx_hash=signed.hash,
                channel=channel.address,
                submitted_at=submitted_at,
                fault=fault,
                failure=FailureCode.CHAIN_UNAVAILABLE if fault is Fault.CHAIN else None,
                message=f"outcome unknown: {detail}",
                envelope=signed,
            )
        if outcome.status not in (TxStatus.SUCCESS, TxStatus.FAILED):
            channel.stale = True  # the sequence number may not have been used
        return self._settled(outcome, channel.address, submitted_at, base)

    async def settle(self, result: WorkResult) -> tuple[WorkResult, bool]:
        """Follow a PENDING result by its transaction hash (`reconcile`: the same envelope
        is sent again while it can still apply). Returns the result and whether that is
        final: still PENDING and not final when the chain could not answer (ask again
        later); final when it settled, or when the chain can no longer tell (its history
        no longer covers the transaction)."""
        tx = result.envelope
        if result.status is not WorkStatus.PENDING or tx is None:
            return result, True
        try:
            outcome = await reconcile(self.client, tx, observe=self.observe)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            detail = str(exc) if isinstance(exc, ChainError) else describe_failure(exc)
            pending = replace(result, message=f"outcome unknown: {detail}")
            if isinstance(exc, ChainError) or is_transient(exc):
                log.info(
                    "work %s for %s: still unknown (%s)",
                    tx.hash[:12],
                    result.farmer_address,
                    detail,
                )
                return pending, False
            # Not the chain's silence (an envelope of another network, a malformed answer):
            # asking again would fail the same way.
            log.error("work %s cannot be followed: %s", tx.hash[:12], detail)
            return pending, True
        if outcome.status is not TxStatus.UNKNOWN:
            # Applied, rejected or expired: the old envelope can never apply again.
            self.channels.settled(tx.source)
        settled = self._settled(outcome, tx.source, result.submitted_at, result)
        if settled.status is WorkStatus.PENDING:
            log.warning("work for %s: %s", result.farmer_address, outcome.describe())
            return settled, True
        log.info(
            "work for %s in block %d settled: %s",
            result.farmer_address,
            result.block_index,
            outcome.describe(),
        )
        return settled, True

    def _refused(self, exc: Exception, channel: ChannelAccount, base: WorkResult) -> WorkResult:
        fault = attribute_fault(TxKind.WORK, exc)
        error = exc if isinstance(exc, ContractError) else None
        if isinstance(exc, ChainUnavailableError):
            failure = FailureCode.CHAIN_UNAVAILABLE
        else:
            failure = _failure_of(error.code if error else None, None)
        message = str(exc) if isinstance(exc, ChainError | ValueError) else describe_failure(exc)
        log.warning("work for %s refused: %s", base.farmer_address, message)
        return replace(
            base,
            status=WorkStatus.FAILED,
            channel=channel.address,
            fault=fault,
            failure=failure,
            contract_error=error.number if error else None,
            error_code=error.code if error else None,
            message=message,
        )

    def _settled(
        self,
        outcome: TxOutcome,
        channel: str,
        submitted_at: float | None,
        base: WorkResult,
    ) -> WorkResult:
        base = replace(
            base,
            tx_hash=outcome.hash,
            ledger=outcome.ledger,
            channel=channel,
            submitted_at=submitted_at,
            envelope=outcome.tx,
        )
        if outcome.ok:
            return replace(
                base,
                status=WorkStatus.SUCCESS,
                gap=outcome.value,
                fault=Fault.NONE,
                failure=None,
                message=None,
            )
        if outcome.status is TxStatus.UNKNOWN:
            return replace(
                base,
                status=WorkStatus.PENDING,
                fault=attribute_fault(TxKind.WORK, outcome),
                message=outcome.describe(),
            )
        error = outcome.contract_error
        return replace(
            base,
            status=WorkStatus.FAILED,
            fault=attribute_fault(TxKind.WORK, outcome),
            failure=_failure_of(outcome.error_code, outcome.status),
            contract_error=error.number if error else None,
            error_code=outcome.error_code,
            message=outcome.describe(),
        )
