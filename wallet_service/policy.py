"""The wallet's own payout policy: whoever holds the pool's client credential still
cannot send a farmer's KALE anywhere but the farmer's registered payout address.

- A wallet is created with its payout address (`CreateWallet`); `Transfer` and
  `CloseWallet` pay that address only (PERMISSION_DENIED otherwise).
- The address changes only with the farmer's proof: a challenge the wallet issues, naming
  the wallet, the current and the new address, a nonce and an expiry, signed SEP-53 style
  by the CURRENT payout address's key. Single use; expires.
- Per-wallet limits (KALE per day, transfers per hour) counted from the wallet's own
  `transactions`, so they hold across replicas (RESOURCE_EXHAUSTED).
- A sweep (`Sweep`) moves the pool's fee or a pooler's share of one harvest out of a
  farmer's account, only into a custodial wallet held for that part, only from a
  harvest the wallet itself made for that account, at most the reward times the
  wallet's own basis points, once per harvest and part. A fee wallet pays the
  operator's address of the wallet's own settings, never one the pool names.
- A fee or share wallet pays its registered address, or a farmer's open custodial wallet
  (a compensation), within the same limits.
- Every refusal is a row in `payout_refusals`, a count in
  `kalepool_wallet_payout_refusals_total{reason}` and a WARNING line.

Each check runs before anything is built or signed, so a refusal sends nothing and
stores no transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import NoReturn
from uuid import UUID

from prometheus_client import Counter
from stellar_sdk import MuxedAccount, StrKey

from kalepool.amounts import STROOPS_PER_KALE, format_kale, share_of
from kalepool.chain import TxKind
from kalepool.farmer_actions import signed_by
from kalepool.grpc_server import (
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    StatusError,
)
from kalepool.settings import Settings
from kalepool.webhook import Webhook
from wallet_service.store import ChallengeRow, Refusal, Store, TxRow, WalletPurpose, WalletRow

log = logging.getLogger("wallet_service.policy")

#: The alert a refused attempt posts (and the PrometheusRule's label for the same).
ALERT_RULE = "payout_policy"

REFUSALS = Counter(
    "kalepool_wallet_payout_refusals_total",
    "Payouts, closes and payout-address changes the wallet's policy refused, by reason.",
    ["reason"],
)

SIGNATURE_BYTES = 64


class Reason(StrEnum):
    """Why the policy refused (the `payout_refusals.reason` and the counter's label)."""

    FOREIGN_DESTINATION = "foreign_destination"
    NO_PAYOUT_ADDRESS = "no_payout_address"
    DAILY_AMOUNT = "daily_amount"
    HOURLY_TRANSFERS = "hourly_transfers"
    CHALLENGE_UNKNOWN = "challenge_unknown"
    CHALLENGE_WRONG_WALLET = "challenge_wrong_wallet"
    CHALLENGE_EXPIRED = "challenge_expired"
    CHALLENGE_USED = "challenge_used"
    CHALLENGE_ADDRESS_MISMATCH = "challenge_address_mismatch"
    BAD_SIGNATURE = "bad_signature"
    FEE_ADDRESS = "fee_address"
    SWEEP_DESTINATION = "sweep_destination"
    SWEEP_HARVEST = "sweep_harvest"
    SWEEP_AMOUNT = "sweep_amount"


class Action(StrEnum):
    """What was refused (`payout_refusals.action`)."""

    TRANSFER = "transfer"
    CLOSE = "close"
    CHANGE = "change_payout_address"
    CREATE = "create_wallet"
    SWEEP = "sweep"


class Part(StrEnum):
    """The part of a reward a sweep moves: its idempotency key's prefix."""

    FEE = "fee"
    SHARE = "share"

    @property
    def purpose(self) -> WalletPurpose:
        """The kind of wallet this part goes to."""
        return WalletPurpose.POOL_FEE if self is Part.FEE else WalletPurpose.POOLER_SHARE


def _default(name: str) -> int:
    value = Settings.model_fields[name].default
    assert isinstance(value, int)
    return value


@dataclass(frozen=True)
class PayoutLimits:
    """The policy's numbers (settings `KALE_POOL_WALLET_PAYOUT_*`)."""

    max_kale_per_day: int = _default("wallet_payout_max_kale_per_day")
    max_transfers_per_hour: int = _default("wallet_payout_max_transfers_per_hour")
    challenge_seconds: int = _default("wallet_payout_challenge_seconds")
    # The wallet's own rates for sweeps (KALE_POOL_POOL_FEE_BPS, ..._POOLER_SHARE_BPS) and
    # the operator's address its fee wallet pays (KALE_POOL_POOL_FEE_ADDRESS; none: no
    # fee wallet can be made).
    pool_fee_bps: int = _default("pool_fee_bps")
    pooler_share_bps: int = _default("pooler_share_bps")
    pool_fee_address: str = ""

    @classmethod
    def of(cls, settings: Settings) -> PayoutLimits:
        return cls(
            max_kale_per_day=settings.wallet_payout_max_kale_per_day,
            max_transfers_per_hour=settings.wallet_payout_max_transfers_per_hour,
            challenge_seconds=settings.wallet_payout_challenge_seconds,
            pool_fee_bps=settings.pool_fee_bps,
            pooler_share_bps=settings.pooler_share_bps,
            pool_fee_address=settings.pool_fee_address,
        )

    def bps(self, part: Part) -> int:
        """The wallet's basis points for a part."""
        return self.pool_fee_bps if part is Part.FEE else self.pooler_share_bps


def challenge_text(wallet: str, current: str, new: str, nonce: str, expires: dt.datetime) -> str:
    """The text a farmer signs to move its payouts: everything the change depends on,
    so a signature cannot be replayed for another wallet, address or time."""
    return (
        "kale-pool payout address change\n"
        f"wallet: {wallet}\n"
        f"from: {current}\n"
        f"to: {new}\n"
        f"nonce: {nonce}\n"
        f"expires: {expires.astimezone(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )


def signing_account(address: str) -> str | None:
    """The G… account whose key signs for a payout address (a muxed M… address's
    underlying account); None for a contract (C…), which holds no key."""
    if StrKey.is_valid_ed25519_public_key(address):
        return address
    if StrKey.is_valid_med25519_public_key(address):
        account_id: str = MuxedAccount.from_account(address).account_id
        return account_id
    return None


class PayoutPolicy:
    """The checks `WalletService` runs before it signs a payout, and the address change."""

    def __init__(self, store: Store, limits: PayoutLimits, webhook: Webhook | None = None) -> None:
        self.store = store
        self.limits = limits
        # Every refused attempt is an alert of its own (someone tried to move a farmer's
        # money where the policy says no): posted beside the call, never delaying it.
        self.webhook = webhook or Webhook(None, attempts=1)
        self._posting: set[asyncio.Task[bool]] = set()

    async def _refuse(
        self,
        wallet: WalletRow | None,
        refusal: Refusal,
        error: type[StatusError],
    ) -> NoReturn:
        await self.store.record_refusal(refusal)
        REFUSALS.labels(refusal.reason).inc()
        log.warning(
            "payout policy refused %s of wallet %s (reason=%s caller=%s): %s",
            refusal.action,
            wallet.public_key if wallet else "-",
            refusal.reason,
            refusal.caller or "-",
            refusal.detail,
        )
        post = asyncio.create_task(
            self.webhook.post(
                f"[kale-pool] REFUSED {ALERT_RULE}: {refusal.action} of wallet"
                f" {wallet.public_key if wallet else '-'} ({refusal.reason}): {refusal.detail}"
            )
        )
        self._posting.add(post)  # held until done: the loop keeps only weak references
        post.add_done_callback(self._posting.discard)
        raise error(refusal.detail)

    async def _check_destination(
        self,
        wallet: WalletRow,
        action: Action,
        destination: str,
        *,
        key: str,
        caller: str | None,
        amount: int | None = None,
    ) -> None:
        registered = wallet.payout_address
        if registered is None:
            await self._refuse(
                wallet,
                Refusal(
                    wallet.id,
                    action,
                    Reason.NO_PAYOUT_ADDRESS,
                    f"wallet {wallet.public_key} has no registered payout address: it pays"
                    " nothing until an operator registers one",
                    destination,
                    amount,
                    key,
                    caller=caller,
                ),
                FailedPrecondition,
            )
        if destination != registered:
            await self._refuse(
                wallet,
                Refusal(
                    wallet.id,
                    action,
                    Reason.FOREIGN_DESTINATION,
                    f"wallet {wallet.public_key} pays only its registered payout address"
                    f" {registered}, not {destination}; the farmer changes it with a signed"
                    " challenge",
                    destination,
                    amount,
                    key,
                    caller=caller,
                ),
                PermissionDenied,
            )

    async def check_transfer(
        self, wallet: WalletRow, destination: str, amount: int, *, key: str, caller: str | None
    ) -> None:
        """Refuse (and record) a transfer to any but the registered address, or over the
        wallet's limits. A fee or share wallet may also pay a farmer's open custodial
        wallet (a compensation: it stays in the service's custody). Runs under the
        account's lock; across replicas the account's sequence number lets only one of two
        racing transfers be stored and sent."""
        internal = False
        if wallet.purpose is not WalletPurpose.FARMER:
            target = await self.store.wallet(destination)
            internal = (
                target is not None
                and target.purpose is WalletPurpose.FARMER
                and target.closed_at is None
            )
        if not internal:
            await self._check_destination(
                wallet, Action.TRANSFER, destination, key=key, caller=caller, amount=amount
            )
        recent = await self.store.recent_payouts(wallet.public_key)
        hourly = self.limits.max_transfers_per_hour
        if recent.transfers_last_hour >= hourly:
            await self._refuse(
                wallet,
                Refusal(
                    wallet.id,
                    Action.TRANSFER,
                    Reason.HOURLY_TRANSFERS,
                    f"wallet {wallet.public_key} made {recent.transfers_last_hour} payouts in"
                    f" the last hour, its limit is {hourly}: try again later",
                    destination,
                    amount,
                    key,
                    caller=caller,
                ),
                ResourceExhausted,
            )
        daily = self.limits.max_kale_per_day * STROOPS_PER_KALE
        if recent.stroops_last_day + amount > daily:
            await self._refuse(
                wallet,
                Refusal(
                    wallet.id,
                    Action.TRANSFER,
                    Reason.DAILY_AMOUNT,
                    f"wallet {wallet.public_key} paid out {format_kale(recent.stroops_last_day)}"
                    f" KALE in the last 24 hours; {format_kale(amount)} more would pass its"
                    f" limit of {format_kale(daily)} KALE: try again later",
                    destination,
                    amount,
                    key,
                    caller=caller,
                ),
                ResourceExhausted,
            )

    async def check_close(
        self, wallet: WalletRow, destination: str, *, key: str, caller: str | None
    ) -> None:
        """Refuse (and record) a close into any but the registered address. A close is not
        counted against the limits: it pays the registered address, once."""
        await self._check_destination(wallet, Action.CLOSE, destination, key=key, caller=caller)

    # --- fee and share wallets, sweeps ----------------------------------------------------

    async def check_create(
        self, purpose: WalletPurpose, payout_address: str, *, caller: str | None
    ) -> None:
        """Refuse (and record) a fee wallet paying any but the operator's address of the
        wallet's own settings: the pool's word never decides where fees go."""
        if purpose is not WalletPurpose.POOL_FEE:
            return
        expected = self.limits.pool_fee_address
        if payout_address != expected:
            await self._refuse(
                None,
                Refusal(
                    None,
                    Action.CREATE,
                    Reason.FEE_ADDRESS,
                    f"the fee wallet pays the operator's address set in the wallet service"
                    f" (KALE_POOL_POOL_FEE_ADDRESS: {expected or 'not set'}),"
                    f" not {payout_address}",
                    destination=payout_address,
                    caller=caller,
                ),
                PermissionDenied,
            )

    async def check_sweep(
        self,
        source: WalletRow,
        destination: WalletRow | None,
        destination_address: str,
        harvest: TxRow | None,
        harvest_hash: str,
        part: Part,
        amount: int,
        *,
        key: str,
        caller: str | None,
    ) -> None:
        """Refuse (and record) a sweep the wallet's own rule does not allow: see the
        module's docstring. Runs under the source account's lock, before anything is
        built; once per harvest and part holds by the key (`<part>:<harvest hash>`)."""

        async def refuse(reason: Reason, detail: str) -> NoReturn:
            await self._refuse(
                source,
                Refusal(
                    source.id,
                    Action.SWEEP,
                    reason,
                    detail,
                    destination_address,
                    amount,
                    key,
                    caller=caller,
                ),
                PermissionDenied,
            )

        if source.purpose is not WalletPurpose.FARMER:
            await refuse(
                Reason.SWEEP_HARVEST,
                f"wallet {source.public_key} is a {source.purpose} wallet: only a farmer's"
                " harvest is swept",
            )
        if (
            destination is None
            or destination.purpose is not part.purpose
            or destination.closed_at is not None
        ):
            what = (
                "no wallet this service holds"
                if destination is None
                else "closed"
                if destination.closed_at is not None
                else f"a {destination.purpose} wallet"
            )
            await refuse(
                Reason.SWEEP_DESTINATION,
                f"a {part} sweep goes only into an open {part.purpose} wallet this service"
                f" holds; {destination_address} is {what}",
            )
        if (
            harvest is None
            or harvest.kind is not TxKind.HARVEST
            or harvest.status != "success"
            or harvest.source_account != source.public_key
            or harvest.return_value is None
        ):
            await refuse(
                Reason.SWEEP_HARVEST,
                f"{harvest_hash} is not a successful harvest this service made for"
                f" {source.public_key}: only such a harvest's reward is swept",
            )
        reward = int(Decimal(harvest.return_value))
        bps = self.limits.bps(part)
        most = share_of(reward, bps)
        if amount > most:
            await refuse(
                Reason.SWEEP_AMOUNT,
                f"the {part} of harvest {harvest_hash} is at most {most} stroops"
                f" ({bps} basis points of its reward of {reward}), not {amount}",
            )

    # --- changing the payout address ---------------------------------------------------

    async def new_challenge(self, wallet: WalletRow, new_address: str) -> ChallengeRow:
        """A fresh challenge for moving `wallet`'s payouts to `new_address`."""
        current = wallet.payout_address
        if current is None:
            raise FailedPrecondition(
                f"wallet {wallet.public_key} has no registered payout address whose key could"
                " sign a change: an operator registers one"
            )
        if signing_account(current) is None:
            raise FailedPrecondition(
                f"wallet {wallet.public_key} pays a contract ({current}), which cannot sign a"
                " change: an operator changes it"
            )
        nonce = secrets.token_hex(16)
        # Whole seconds (the text shows them), rounded up: never shorter than promised.
        expires = (
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.limits.challenge_seconds)
        ).replace(microsecond=0) + dt.timedelta(seconds=1)
        text = challenge_text(wallet.public_key, current, new_address, nonce, expires)
        row = await self.store.insert_challenge(
            wallet.id, current, new_address, nonce, text, expires
        )
        log.info(
            "payout challenge %s for wallet %s: %s -> %s, expires %s",
            row.id,
            wallet.public_key,
            current,
            new_address,
            expires.isoformat(),
        )
        return row

    async def change_address(
        self,
        wallet: WalletRow,
        challenge_id: UUID,
        new_address: str,
        signature: bytes,
        *,
        caller: str | None,
    ) -> tuple[WalletRow, str, bool]:
        """Verify the farmer's proof and change the address: (the wallet after, the address
        it replaced, whether this repeated a change already made). Any failed proof is
        refused (PERMISSION_DENIED) and recorded; nothing changes."""

        async def refuse(reason: Reason, detail: str) -> NoReturn:
            await self._refuse(
                wallet,
                Refusal(
                    wallet.id,
                    Action.CHANGE,
                    reason,
                    detail,
                    destination=new_address,
                    challenge_id=challenge_id,
                    caller=caller,
                ),
                PermissionDenied,
            )

        challenge = await self.store.challenge(challenge_id)
        if challenge is None:
            await refuse(Reason.CHALLENGE_UNKNOWN, f"no payout challenge {challenge_id}")
        if challenge.wallet_id != wallet.id:
            await refuse(
                Reason.CHALLENGE_WRONG_WALLET,
                f"payout challenge {challenge_id} was issued for another wallet,"
                f" not {wallet.public_key}",
            )
        if challenge.used_at is not None:
            done = await self.store.change_of(challenge.id)
            if (
                done is not None
                and done.new_address == new_address
                and done.signature == signature
                and wallet.payout_address == new_address
            ):
                return wallet, done.old_address or "", True  # the same call again
            await refuse(Reason.CHALLENGE_USED, f"payout challenge {challenge_id} was used already")
        if challenge.new_address != new_address:
            await refuse(
                Reason.CHALLENGE_ADDRESS_MISMATCH,
                f"payout challenge {challenge_id} is for {challenge.new_address},"
                f" not {new_address}: ask for a challenge for the address wanted",
            )
        if challenge.expires_at <= dt.datetime.now(dt.UTC):
            await refuse(
                Reason.CHALLENGE_EXPIRED,
                f"payout challenge {challenge_id} expired at {challenge.expires_at.isoformat()}:"
                " ask for a new one",
            )
        if wallet.payout_address != challenge.signer_address:
            await refuse(
                Reason.CHALLENGE_USED,
                f"the payout address of wallet {wallet.public_key} changed since challenge"
                f" {challenge_id} was issued: ask for a new one",
            )
        signer = signing_account(challenge.signer_address)
        assert signer is not None  # new_challenge issues none for a contract
        if not signed_by(signer, challenge.message, signature):
            await refuse(
                Reason.BAD_SIGNATURE,
                f"the signature is not {challenge.signer_address}'s signature of challenge"
                f" {challenge_id} (SEP-53: the current payout address's key signs the"
                " challenge's text)",
            )
        changed = await self.store.change_payout_address(challenge, signature)
        if changed is None:
            await refuse(
                Reason.CHALLENGE_USED,
                f"payout challenge {challenge_id} was used or expired meanwhile",
            )
        log.warning(  # a change of where money goes: worth an operator's eye
            "payout address of wallet %s changed from %s to %s (challenge %s, caller=%s)",
            wallet.public_key,
            challenge.signer_address,
            new_address,
            challenge_id,
            caller or "-",
        )
        return changed, challenge.signer_address, False
