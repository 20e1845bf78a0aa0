"""PoolService: the operators' registry of poolers and farmers, funding and balances.

Only an operator's certificate reaches these handlers (the server's caller check).
Every request is validated whole before anything is read or written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
import uuid
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from kalepool import farmer_actions, wire
from kalepool.amounts import MIN_FUNDING_XLM_STROOPS, format_kale
from kalepool.farmer_actions import Action, ActionError
from kalepool.grpc_server import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    caller_name,
)
from kalepool.request_checks import (
    check_account,
    check_destination,
    check_idempotency_key,
    check_uuid,
)
from kalepool.settings import Settings
from kalepool.tls import SERVICE_NAMES, ClientCertificate, check_client_certificate
from kalepool.v1 import common_pb2, pool_pb2, pool_pb2_grpc, wallet_pb2
from pool_service import convert
from pool_service.blocks import BlockReports, obligations_past_limit
from pool_service.books.actions import ActionNonceStore, farmer_blocks
from pool_service.books.certificates import CertificateStore
from pool_service.books.enums import FarmerState, FarmerStatus
from pool_service.books.farmers import FarmerRow, FarmerStore
from pool_service.books.ledger import LedgerStore
from pool_service.books.poolers import PoolerRow, PoolerStore
from pool_service.contract_watch import ContractWatch
from pool_service.payouts import Payouts
from pool_service.shares import Shares
from pool_service.validate import Page, check_name, check_stake_bps
from pool_service.wallet import WalletClient, wallet_call

log = logging.getLogger("pool_service")


# Farmer ids derived from RegisterFarmer idempotency keys: the same key always names the
# same farmer, so a retry finds the wallet (CreateWallet is idempotent per owner) and the
# row the first call made, even when that call failed between the two.
_FARMER_ID_NAMESPACE = uuid.UUID("6d1f0f5e-0c1a-4a53-9c55-6b616c65706f")


# A PEM certificate is a couple of kilobytes; a chain pasted by mistake is refused.
MAX_CERTIFICATE_PEM = 16 * 1024
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_fingerprint(value: str) -> str:
    """A SHA-256 certificate fingerprint as stored: 64 lowercase hex digits (colons,
    spaces and case are forgiven)."""
    cleaned = value.replace(":", "").replace(" ", "").lower()
    if not _FINGERPRINT.match(cleaned):
        raise InvalidArgument("fingerprint must be a SHA-256 fingerprint: 64 hex digits")
    return cleaned


def new_api_key(entropy_bytes: int) -> tuple[str, bytes, str]:
    """(key, its SHA-256, its public prefix). The key is shown once and never stored."""
    key = "kp_" + secrets.token_urlsafe(entropy_bytes)
    return key, hash_api_key(key), key[:12]


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _constraint(exc: psycopg.Error) -> str:
    return exc.diag.constraint_name or ""


class PoolRegistry(pool_pb2_grpc.PoolServiceServicer):
    """kalepool.v1.PoolService: poolers, farmers, funding, balances."""

    def __init__(
        self,
        poolers: PoolerStore,
        farmers: FarmerStore,
        ledger: LedgerStore,
        wallet: WalletClient,
        settings: Settings,
        reports: BlockReports,
        payouts: Payouts,
        certificates: CertificateStore,
        ca_pem: bytes,
        shares: Shares,
        contract_watch: ContractWatch | None = None,
        *,
        nonces: ActionNonceStore,
        network_passphrase: str,
        signing_callers: frozenset[str],
    ) -> None:
        self.contract_watch = contract_watch
        # Farmer actions (FarmerSignature): whose writes need the farmer's signature (the
        # farmers' web page), the pool line they must name, and the nonces taken.
        self.nonces = nonces
        self.network_passphrase = network_passphrase
        self.signing_callers = signing_callers
        self.poolers = poolers
        self.farmers = farmers
        self.ledger = ledger
        self.wallet = wallet
        self.settings = settings
        self.reports = reports
        self.payouts = payouts
        self.certificates = certificates
        self.ca_pem = ca_pem
        self.shares = shares

    # --- poolers ----------------------------------------------------------------------------

    def _check_capacity(self, max_farmers: int) -> int:
        cap = self.settings.max_farmers_per_pooler
        if not 1 <= max_farmers <= cap:
            raise InvalidArgument(f"max_farmers must be 1 to {cap}, got {max_farmers}")
        return max_farmers

    async def RegisterPooler(
        self, request: pool_pb2.RegisterPoolerRequest, context: Any
    ) -> pool_pb2.RegisterPoolerResponse:
        name = check_name(request.name)
        public_key = check_account("public_key", request.public_key)
        max_farmers = self._check_capacity(request.max_farmers)
        certificate = (
            self._check_certificate(request.certificate_pem) if request.certificate_pem else None
        )
        key, key_hash, prefix = new_api_key(self.settings.api_key_length)
        try:
            row = await self.poolers.insert_pooler(
                name, public_key, max_farmers, key_hash, prefix, certificate
            )
        except pg_errors.UniqueViolation as exc:
            if _constraint(exc) == "poolers_public_key_key":
                raise AlreadyExists(f"a pooler with public key {public_key} exists") from None
            if _constraint(exc) == "pooler_certificates_fingerprint_key" and certificate:
                raise AlreadyExists(
                    f"certificate {certificate.fingerprint} is registered already"
                ) from None
            raise
        log.info("registered pooler %s (%s), key %s…", row.id, name, prefix)
        return pool_pb2.RegisterPoolerResponse(pooler=convert.pooler_pb(row), api_key=key)

    async def _pooler(self, pooler_id: str) -> PoolerRow:
        row = await self.poolers.pooler(check_uuid("pooler_id", pooler_id))
        if row is None:
            raise NotFound(f"no pooler {pooler_id}")
        return row

    async def GetPooler(
        self, request: pool_pb2.GetPoolerRequest, context: Any
    ) -> pool_pb2.GetPoolerResponse:
        return pool_pb2.GetPoolerResponse(
            pooler=convert.pooler_pb(await self._pooler(request.pooler_id))
        )

    async def ListPoolers(
        self, request: pool_pb2.ListPoolersRequest, context: Any
    ) -> pool_pb2.ListPoolersResponse:
        active: bool | None = None
        if request.status == common_pb2.POOLER_STATUS_ACTIVE:
            active = True
        elif request.status == common_pb2.POOLER_STATUS_DISABLED:
            active = False
        elif request.status != common_pb2.POOLER_STATUS_UNSPECIFIED:
            raise InvalidArgument(f"status {request.status} is not a pooler status")
        page = Page(request.pagination, "poolers", active)
        after = _after(page)
        rows = await self.poolers.list_poolers(active, after, page.size + 1)
        shown = rows[: page.size]
        token = page.next_token(
            rows, [shown[-1].created_at.isoformat(), str(shown[-1].id)] if shown else []
        )
        return pool_pb2.ListPoolersResponse(
            poolers=[convert.pooler_pb(r) for r in shown], next_page_token=token
        )

    async def UpdatePooler(
        self, request: pool_pb2.UpdatePoolerRequest, context: Any
    ) -> pool_pb2.UpdatePoolerResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        name = check_name(request.name) if request.HasField("name") else None
        max_farmers = (
            self._check_capacity(request.max_farmers) if request.HasField("max_farmers") else None
        )
        active: bool | None = None
        if request.HasField("status"):
            if request.status == common_pb2.POOLER_STATUS_ACTIVE:
                active = True
            elif request.status == common_pb2.POOLER_STATUS_DISABLED:
                active = False
            else:
                raise InvalidArgument(
                    "status must be POOLER_STATUS_ACTIVE or POOLER_STATUS_DISABLED"
                )
        try:
            row = await self.poolers.update_pooler(pooler_id, name, max_farmers, active)
        except pg_errors.CheckViolation as exc:
            if _constraint(exc) == "poolers_capacity":
                raise FailedPrecondition(
                    f"pooler {pooler_id} serves more than {max_farmers} farmers;"
                    " max_farmers cannot go below its current farmers"
                ) from None
            raise
        if row is None:
            raise NotFound(f"no pooler {pooler_id}")
        return pool_pb2.UpdatePoolerResponse(pooler=convert.pooler_pb(row))

    async def RotatePoolerApiKey(
        self, request: pool_pb2.RotatePoolerApiKeyRequest, context: Any
    ) -> pool_pb2.RotatePoolerApiKeyResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        key, key_hash, prefix = new_api_key(self.settings.api_key_length)
        if not await self.poolers.rotate_key(pooler_id, key_hash, prefix):
            raise NotFound(f"no pooler {pooler_id}")
        log.info("rotated the API key of pooler %s, new key %s…", pooler_id, prefix)
        return pool_pb2.RotatePoolerApiKeyResponse(api_key=key)

    # --- certificates ------------------------------------------------------------------------

    def _check_certificate(self, pem: str) -> ClientCertificate:
        if len(pem) > MAX_CERTIFICATE_PEM:
            raise InvalidArgument(f"certificate_pem must be at most {MAX_CERTIFICATE_PEM} bytes")
        try:
            cert = check_client_certificate(pem.encode(), self.ca_pem)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if cert.common_name in SERVICE_NAMES:
            raise InvalidArgument(
                f"common name {cert.common_name!r} is a service's, not a pooler's certificate"
            )
        return cert

    async def AddPoolerCertificate(
        self, request: pool_pb2.AddPoolerCertificateRequest, context: Any
    ) -> pool_pb2.AddPoolerCertificateResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        if not request.certificate_pem:
            raise InvalidArgument("certificate_pem is required")
        cert = self._check_certificate(request.certificate_pem)
        await self._pooler(request.pooler_id)
        try:
            row = await self.certificates.add(pooler_id, cert)
        except pg_errors.UniqueViolation as exc:
            if _constraint(exc) != "pooler_certificates_fingerprint_key":
                raise
            known = await self.certificates.by_fingerprint(cert.fingerprint)
            whose = (
                "this pooler's" if known and known.pooler_id == pooler_id else "another pooler's"
            )
            revoked = (
                " (revoked: a revoked certificate is never admitted again)"
                if (known and known.revoked_at)
                else ""
            )
            raise AlreadyExists(
                f"certificate {cert.fingerprint} is {whose} already{revoked}"
            ) from None
        except pg_errors.ForeignKeyViolation:
            raise NotFound(f"no pooler {pooler_id}") from None
        log.info("pooler %s: certificate %s (%s) added", pooler_id, row.fingerprint, row.subject)
        return pool_pb2.AddPoolerCertificateResponse(certificate=convert.certificate_pb(row))

    async def ListPoolerCertificates(
        self, request: pool_pb2.ListPoolerCertificatesRequest, context: Any
    ) -> pool_pb2.ListPoolerCertificatesResponse:
        pooler = await self._pooler(request.pooler_id)
        rows = await self.certificates.of_pooler(pooler.id)
        return pool_pb2.ListPoolerCertificatesResponse(
            certificates=[convert.certificate_pb(r) for r in rows]
        )

    async def RevokePoolerCertificate(
        self, request: pool_pb2.RevokePoolerCertificateRequest, context: Any
    ) -> pool_pb2.RevokePoolerCertificateResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        fingerprint = check_fingerprint(request.fingerprint)
        row = await self.certificates.revoke(pooler_id, fingerprint)
        if row is None:
            raise NotFound(f"pooler {pooler_id} has no certificate {fingerprint}")
        log.info("pooler %s: certificate %s revoked", pooler_id, fingerprint)
        return pool_pb2.RevokePoolerCertificateResponse(certificate=convert.certificate_pb(row))

    # --- farmer actions: the farmer's own signature ---------------------------------------

    async def _consent(
        self,
        context: Any,
        signed: pool_pb2.FarmerSignature | None,
        action: Action,
        payout_address: str,
        farmer_id: uuid.UUID | None = None,
        **fields: Any,
    ) -> None:
        """Check the farmer's signed `action` (kalepool.farmer_actions) and take its nonce.

        From a caller of `signing_callers` (the farmers' web page) a join, payout or leave
        needs it: the web process alone cannot act for anyone. An operator may act
        without one; one it sends is checked all the same. A malformed message is
        INVALID_ARGUMENT; a wrong signer, a field unlike the request's, an expired or
        already used action PERMISSION_DENIED; nothing is written before it passes."""
        caller = caller_name(context)
        if signed is None:
            if caller in self.signing_callers:
                raise PermissionDenied(
                    f"a {action} from the web page needs the farmer's signed {action} action"
                    " (farmer_signature)"
                )
            return
        try:
            farmer_actions.parse(signed.message)
        except ActionError as exc:
            raise InvalidArgument(f"farmer_signature: {exc}") from None
        try:
            got = farmer_actions.verify(
                signed.message,
                signed.signature,
                action=action,
                pool=self.network_passphrase,
                farmer=str(farmer_id) if farmer_id else farmer_actions.NEW_FARMER,
                payout_address=payout_address,
                **fields,
            )
        except ActionError as exc:
            raise PermissionDenied(f"farmer_signature: {exc}") from None
        if not await self.nonces.use(got.nonce, action, payout_address, farmer_id, got.expires):
            raise PermissionDenied(
                "farmer_signature: this signed action was used already; sign a new one"
            )
        log.info("farmer action %s by %s taken (nonce %s)", action, payout_address, got.nonce)

    @staticmethod
    def _signature(request: Any) -> pool_pb2.FarmerSignature | None:
        return request.farmer_signature if request.HasField("farmer_signature") else None

    # --- farmers ----------------------------------------------------------------------------

    async def RegisterFarmer(
        self, request: pool_pb2.RegisterFarmerRequest, context: Any
    ) -> pool_pb2.RegisterFarmerResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        # A G… account: its key signs any later change of it (the wallet's payout policy).
        payout = check_account("payout_address", request.payout_address)
        bps = check_stake_bps(request.stake_bps)
        await self._consent(
            context,
            self._signature(request),
            "join",
            payout,
            pooler_id=str(pooler_id),
            stake_bps=bps,
        )
        if request.idempotency_key:
            key = check_idempotency_key(request.idempotency_key)
            farmer_id = uuid.uuid5(_FARMER_ID_NAMESPACE, key)
            existing = await self.farmers.farmer(farmer_id)
            if existing is not None:
                return self._registered(self._same_farmer(existing, pooler_id, payout, bps))
        else:
            farmer_id = uuid.uuid4()
        pooler = await self.poolers.pooler(pooler_id)
        if pooler is None:
            raise NotFound(f"no pooler {pooler_id}")
        if not pooler.is_active:
            raise FailedPrecondition(f"pooler {pooler_id} is disabled")
        excess = await obligations_past_limit(self.reports, pooler_id)
        if excess is not None:
            raise FailedPrecondition(
                f"pooler {pooler_id} owes {format_kale(excess)} KALE of compensations more than"
                " its share balance covers, past the pool's limit: it takes no new farmers"
                " until they are paid"
            )
        if pooler.current_farmers >= pooler.max_farmers:
            raise FailedPrecondition(
                f"pooler {pooler_id} is full ({pooler.current_farmers} of {pooler.max_farmers})"
            )
        made = await wallet_call(
            self.wallet.stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id=str(farmer_id), payout_address=payout)
            ),
            "create the custodial wallet",
        )
        custodial = made.wallet.public_key
        if custodial == payout:
            raise InvalidArgument("payout_address must not be the custodial address")
        try:
            row, _ = await self.farmers.insert_farmer(farmer_id, pooler_id, custodial, payout, bps)
        except pg_errors.CheckViolation as exc:
            # Another registration took the last place between the check and the insert.
            # The wallet stays with its owner id: a retry with the same key reuses it.
            if _constraint(exc) == "poolers_capacity":
                raise FailedPrecondition(f"pooler {pooler_id} is full") from None
            raise
        log.info("registered farmer %s with pooler %s, custodial %s", row.id, pooler_id, custodial)
        return self._registered(self._same_farmer(row, pooler_id, payout, bps))

    @staticmethod
    def _same_farmer(row: FarmerRow, pooler_id: uuid.UUID, payout: str, bps: int) -> FarmerRow:
        if (row.pooler_id, row.payout_address, row.stake_bps) != (pooler_id, payout, bps):
            raise AlreadyExists(
                f"idempotency key already registered farmer {row.id} with other settings"
            )
        return row

    @staticmethod
    def _registered(row: FarmerRow) -> pool_pb2.RegisterFarmerResponse:
        return pool_pb2.RegisterFarmerResponse(
            farmer=convert.farmer_pb(row),
            custodial_address=row.custodial_public_key,
            needs_funding=not row.is_funded,
            min_funding_xlm_stroops=MIN_FUNDING_XLM_STROOPS,
        )

    async def _farmer(self, farmer_id: str) -> FarmerRow:
        row = await self.farmers.farmer(check_uuid("farmer_id", farmer_id))
        if row is None:
            raise NotFound(f"no farmer {farmer_id}")
        return row

    async def _account(self, address: str) -> common_pb2.AccountState:
        got = await wallet_call(
            self.wallet.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=address)),
            "read the custodial account",
        )
        return got.account

    async def ConfirmFunding(
        self, request: pool_pb2.ConfirmFundingRequest, context: Any
    ) -> pool_pb2.ConfirmFundingResponse:
        farmer = await self._farmer(request.farmer_id)
        if farmer.status != FarmerStatus.ACTIVE:
            raise FailedPrecondition(f"farmer {farmer.id} is {farmer.status}")
        address = farmer.custodial_public_key
        # One wallet call: EnsureTrustline reads the account, adds the trustline when it
        # is missing (awaiting its ledger) and answers the account as it last read it.
        ensure = wallet_pb2.EnsureTrustlineRequest(
            idempotency_key=f"trustline:{address}", public_key=address
        )
        try:
            trust = await wallet_call(
                self.wallet.stub.EnsureTrustline(ensure), "add the KALE trustline"
            )
        except FailedPrecondition:
            # Refused before anything was signed: most often the account does not exist
            # yet, which the answer explains. If it exists now, it may have appeared
            # since: asked once more, and a second refusal stands.
            account = await self._account(address)
            if not account.exists:
                return pool_pb2.ConfirmFundingResponse(
                    farmer=convert.farmer_pb(farmer),
                    funded=False,
                    account=account,
                    detail=(
                        f"account {address} does not exist on chain yet: send it at least"
                        f" {format_kale(MIN_FUNDING_XLM_STROOPS)} XLM"
                    ),
                )
            trust = await wallet_call(
                self.wallet.stub.EnsureTrustline(ensure), "add the KALE trustline"
            )
        # A wallet of an earlier version answers no account: read it.
        account = trust.account if trust.HasField("account") else await self._account(address)
        detail = ""
        status = trust.outcome.status
        if not trust.already_present and status != common_pb2.TX_STATUS_SUCCESS:
            if status == common_pb2.TX_STATUS_PENDING:
                detail = "the KALE trustline transaction is pending; confirm again shortly"
            else:
                detail = f"the KALE trustline could not be added: {trust.outcome.failure.message}"
        if detail:
            return pool_pb2.ConfirmFundingResponse(
                farmer=convert.farmer_pb(farmer), funded=False, account=account, detail=detail
            )
        if not farmer.is_funded:
            updated = await self.farmers.mark_funded(farmer.id)
            assert updated is not None
            farmer = updated
            log.info("farmer %s funded and active", farmer.id)
        return pool_pb2.ConfirmFundingResponse(
            farmer=convert.farmer_pb(farmer), funded=True, account=account
        )

    async def GetFarmer(
        self, request: pool_pb2.GetFarmerRequest, context: Any
    ) -> pool_pb2.GetFarmerResponse:
        which = request.WhichOneof("key")
        if which == "farmer_id":
            row = await self._farmer(request.farmer_id)
        elif which == "custodial_address":
            address = check_account("custodial_address", request.custodial_address)
            found = await self.farmers.farmer_by_address(address)
            if found is None:
                raise NotFound(f"no farmer with custodial address {address}")
            row = found
        else:
            raise InvalidArgument("give a farmer_id or a custodial_address")
        return pool_pb2.GetFarmerResponse(farmer=convert.farmer_pb(row))

    async def ListFarmers(
        self, request: pool_pb2.ListFarmersRequest, context: Any
    ) -> pool_pb2.ListFarmersResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        state: FarmerState | None = None
        if request.status != common_pb2.FARMER_STATUS_UNSPECIFIED:
            status = wire.farmer_status_label(request.status)
            if status is None:
                raise InvalidArgument(f"status {request.status} is not a farmer status")
            state = FarmerState(status)
        payout = (
            check_destination("payout_address", request.payout_address)
            if request.payout_address
            else None
        )
        page = Page(request.pagination, "farmers", pooler_id, state, payout)
        rows = await self.farmers.list_farmers(
            pooler_id, state, _after(page), page.size + 1, payout_address=payout
        )
        shown = rows[: page.size]
        token = page.next_token(
            rows, [shown[-1].created_at.isoformat(), str(shown[-1].id)] if shown else []
        )
        return pool_pb2.ListFarmersResponse(
            farmers=[convert.farmer_pb(r) for r in shown], next_page_token=token
        )

    async def GetFarmerBalance(
        self, request: pool_pb2.GetFarmerBalanceRequest, context: Any
    ) -> pool_pb2.GetFarmerBalanceResponse:
        farmer = await self._farmer(request.farmer_id)
        totals = await self.ledger.balance_totals(farmer.id)
        response = pool_pb2.GetFarmerBalanceResponse(
            farmer_id=str(farmer.id),
            balance_stroops=farmer.current_balance,
            # Payouts are debited when prepared, so the balance holds nothing pending.
            available_stroops=max(0, farmer.current_balance),
            staked_stroops=totals.staked,
            total_reward_stroops=totals.rewards,
            total_paid_out_stroops=totals.paid_out,
        )
        try:
            got = await wallet_call(
                self.wallet.stub.GetWallet(
                    wallet_pb2.GetWalletRequest(public_key=farmer.custodial_public_key)
                ),
                "read the custodial account",
            )
        except Exception as exc:  # the chain's view is optional here: leave it unset
            log.warning("balance of farmer %s without chain state: %s", farmer.id, exc)
        else:
            response.account.CopyFrom(got.account)
        return response

    async def _farmer_page(
        self,
        request: pool_pb2.ListFarmerLedgerRequest | pool_pb2.ListFarmerBlocksRequest,
        kind: str,
    ) -> tuple[uuid.UUID, Page, int | None]:
        """A page of one farmer's history: the farmer (NOT_FOUND if unknown), the page and
        the position it continues before (the last one shown, from the token)."""
        farmer_id = check_uuid("farmer_id", request.farmer_id)
        page = Page(request.pagination, kind, farmer_id)
        before: int | None = None
        if page.after is not None:
            if len(page.after) != 1 or not isinstance(page.after[0], int):
                raise InvalidArgument("page_token is not a token this server issued")
            before = page.after[0]
        if await self.farmers.farmer(farmer_id) is None:
            raise NotFound(f"no farmer {farmer_id}")
        return farmer_id, page, before

    async def ListFarmerLedger(
        self, request: pool_pb2.ListFarmerLedgerRequest, context: Any
    ) -> pool_pb2.ListFarmerLedgerResponse:
        farmer_id, page, before = await self._farmer_page(request, "ledger")
        rows = await self.ledger.ledger(farmer_id, before, page.size + 1)
        shown = rows[: page.size]
        token = page.next_token(rows, [shown[-1].id] if shown else [])
        return pool_pb2.ListFarmerLedgerResponse(
            entries=[convert.ledger_pb(r) for r in shown], next_page_token=token
        )

    # --- payouts and leaving; blocks, stats and compensations --------------------------------

    async def RequestPayout(
        self, request: pool_pb2.RequestPayoutRequest, context: Any
    ) -> pool_pb2.RequestPayoutResponse:
        signed = self._signature(request)
        if signed is not None or caller_name(context) in self.signing_callers:
            farmer = await self._farmer(request.farmer_id)
            await self._consent(
                context,
                signed,
                "payout",
                farmer.payout_address,
                farmer.id,
                amount_stroops=request.amount_stroops,
            )
        return await self.payouts.request_payout(request)

    async def ListPayouts(
        self, request: pool_pb2.ListPayoutsRequest, context: Any
    ) -> pool_pb2.ListPayoutsResponse:
        return await self.payouts.list_payouts(request)

    async def LeavePool(
        self, request: pool_pb2.LeavePoolRequest, context: Any
    ) -> pool_pb2.LeavePoolResponse:
        signed = self._signature(request)
        if signed is not None or caller_name(context) in self.signing_callers:
            farmer = await self._farmer(request.farmer_id)
            await self._consent(context, signed, "leave", farmer.payout_address, farmer.id)
        return await self.payouts.leave(request)

    async def ListFarmerBlocks(
        self, request: pool_pb2.ListFarmerBlocksRequest, context: Any
    ) -> pool_pb2.ListFarmerBlocksResponse:
        farmer_id, page, before = await self._farmer_page(request, "farmer_blocks")
        rows = await farmer_blocks(self.farmers.pool, farmer_id, before, page.size + 1)
        shown = rows[: page.size]
        token = page.next_token(rows, [shown[-1].block_index] if shown else [])
        return pool_pb2.ListFarmerBlocksResponse(
            blocks=[
                pool_pb2.FarmerBlock(
                    block_index=r.block_index,
                    planted=r.planted,
                    stake_stroops=r.stake,
                    worked=r.worked,
                    zeros=r.zeros,
                    harvested=r.harvested,
                    reward_stroops=r.reward,
                    compensation_stroops=r.compensation,
                    fees_stroops=r.fees,
                    failure=r.failure or "",
                )
                for r in shown
            ],
            next_page_token=token,
        )

    async def GetBlock(
        self, request: pool_pb2.GetBlockRequest, context: Any
    ) -> pool_pb2.GetBlockResponse:
        return await self.reports.get_block(request)

    async def ListBlocks(
        self, request: pool_pb2.ListBlocksRequest, context: Any
    ) -> pool_pb2.ListBlocksResponse:
        return await self.reports.list_blocks(request)

    async def GetPoolStats(
        self, request: pool_pb2.GetPoolStatsRequest, context: Any
    ) -> pool_pb2.GetPoolStatsResponse:
        return await self.reports.pool_stats(request)

    async def GetPoolerStats(
        self, request: pool_pb2.GetPoolerStatsRequest, context: Any
    ) -> pool_pb2.GetPoolerStatsResponse:
        return await self.reports.pooler_stats(request)

    async def ListCompensations(
        self, request: pool_pb2.ListCompensationsRequest, context: Any
    ) -> pool_pb2.ListCompensationsResponse:
        return await self.reports.list_compensations(request)

    async def RequestPoolerPayout(
        self, request: pool_pb2.RequestPoolerPayoutRequest, context: Any
    ) -> pool_pb2.RequestPoolerPayoutResponse:
        return await self.shares.request_pooler_payout(request)

    async def RequestFeePayout(
        self, request: pool_pb2.RequestFeePayoutRequest, context: Any
    ) -> pool_pb2.RequestFeePayoutResponse:
        return await self.shares.request_fee_payout(request)

    # --- the payout address: the wallet decides, the pool relays and keeps a copy ----------

    async def NewFarmerPayoutChallenge(
        self, request: pool_pb2.NewFarmerPayoutChallengeRequest, context: Any
    ) -> pool_pb2.NewFarmerPayoutChallengeResponse:
        new = check_account("new_payout_address", request.new_payout_address)
        farmer = await self._farmer(request.farmer_id)
        got = await wallet_call(
            self.wallet.stub.NewPayoutChallenge(
                wallet_pb2.NewPayoutChallengeRequest(
                    public_key=farmer.custodial_public_key, new_payout_address=new
                )
            ),
            "issue a payout-address challenge",
        )
        return pool_pb2.NewFarmerPayoutChallengeResponse(
            challenge_id=got.challenge_id,
            message=got.message,
            signer_address=got.signer_address,
            expires_at=got.expires_at,
        )

    async def ChangeFarmerPayoutAddress(
        self, request: pool_pb2.ChangeFarmerPayoutAddressRequest, context: Any
    ) -> pool_pb2.ChangeFarmerPayoutAddressResponse:
        challenge_id = str(check_uuid("challenge_id", request.challenge_id))
        new = check_account("new_payout_address", request.new_payout_address)
        farmer = await self._farmer(request.farmer_id)
        changed = await wallet_call(
            self.wallet.stub.ChangePayoutAddress(
                wallet_pb2.ChangePayoutAddressRequest(
                    public_key=farmer.custodial_public_key,
                    challenge_id=challenge_id,
                    new_payout_address=new,
                    signature=request.signature,
                )
            ),
            "change the payout address",
        )
        # The wallet's answer is the truth; a retry after a failure here replays it.
        address = changed.wallet.payout_address
        row = await self.farmers.set_payout_address(farmer.id, address)
        assert row is not None  # farmers are never deleted
        log.info("farmer %s pays out to %s now (the wallet changed it)", farmer.id, address)
        return pool_pb2.ChangeFarmerPayoutAddressResponse(
            farmer=convert.farmer_pb(row), previous_payout_address=changed.previous_payout_address
        )

    # --- the contract watch ---------------------------------------------------------------

    def _watch(self) -> ContractWatch:
        if self.contract_watch is None:
            raise Unavailable("this pool service runs no contract watch")
        return self.contract_watch

    async def GetContractStatus(
        self, request: pool_pb2.GetContractStatusRequest, context: Any
    ) -> pool_pb2.GetContractStatusResponse:
        state = await self._watch().refresh()
        return pool_pb2.GetContractStatusResponse(status=convert.contract_status_pb(state))

    async def AcknowledgeContract(
        self, request: pool_pb2.AcknowledgeContractRequest, context: Any
    ) -> pool_pb2.AcknowledgeContractResponse:
        by = caller_name(context) or "operator"
        state = await self._watch().acknowledge(request.wasm_hash, by)
        return pool_pb2.AcknowledgeContractResponse(status=convert.contract_status_pb(state))


def _after(page: Page) -> tuple[str, str] | None:
    """The (created_at, id) position a list token holds."""
    if page.after is None:
        return None
    try:
        created, row_id = page.after
        dt.datetime.fromisoformat(created)
        uuid.UUID(row_id)
    except (TypeError, ValueError):
        raise InvalidArgument("page_token is not a token this server issued") from None
    return created, row_id
