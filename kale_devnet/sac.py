"""The Stellar Asset Contract (SAC) for credit assets, backed by classic trustlines.

Balances of `G…` accounts live in their trustlines (the issuer's is unlimited); balances
of `C…` contracts live in the SAC's persistent `Balance` entries. Events follow the
protocol-23 format (`token_events`): no admin topic on `mint`, and a `transfer` from or to
the issuer is announced as the `mint` or `burn` it is.
"""

from __future__ import annotations

from dataclasses import replace

from stellar_sdk import xdr as stellar_xdr

from kale_devnet import token_events
from kale_devnet import values as v
from kale_devnet.errors import ErrCode, ErrType, HostError
from kale_devnet.host import Host
from kale_devnet.ledger import (
    AUTHORIZED_FLAG,
    I64_MAX,
    Durability,
    TrustlineRec,
    trustline_key,
)
from kalepool.protocol import AssetError

DECIMALS = 7


def admin_key() -> stellar_xdr.SCVal:
    return v.vec([v.symbol("Admin")])


def asset_info_key() -> stellar_xdr.SCVal:
    return v.vec([v.symbol("AssetInfo")])


def balance_key(holder: str) -> stellar_xdr.SCVal:
    return v.vec([v.symbol("Balance"), v.address(holder)])


def genesis_instance_storage(
    code: str, issuer: str, admin: str
) -> list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]]:
    """The instance storage a SAC deployed for `code:issuer` holds, with `admin` set."""
    kind = "AlphaNum4" if len(code) <= 4 else "AlphaNum12"
    return [
        (
            v.symbol("METADATA"),
            v.struct(
                {
                    "decimal": v.u32(DECIMALS),
                    "name": v.string_val(f"{code}:{issuer}"),
                    "symbol": v.string_val(code),
                }
            ),
        ),
        (admin_key(), v.address(admin)),
        (
            asset_info_key(),
            v.vec(
                [
                    v.symbol(kind),
                    v.struct(
                        {
                            "asset_code": v.string_val(code),
                            "issuer": v.bytes_val(v.address(issuer).to_xdr_bytes()[-32:]),
                        }
                    ),
                ]
            ),
        ),
    ]


class StellarAssetContract:
    """SAC functions: balance, transfer, burn, mint (admin), and metadata."""

    def invoke(
        self, host: Host, contract: str, fn: str, args: list[stellar_xdr.SCVal]
    ) -> stellar_xdr.SCVal:
        table = {
            "balance": (1, self._balance),
            "transfer": (3, self._transfer),
            "burn": (2, self._burn),
            "mint": (2, self._mint),
            "decimals": (0, self._decimals),
            "name": (0, self._name),
            "symbol": (0, self._symbol),
            "admin": (0, self._admin),
            "set_admin": (1, self._set_admin),
            "authorized": (1, self._authorized),
        }
        if fn not in table:
            raise HostError(
                ErrType.SCE_CONTEXT,
                ErrCode.SCEC_MISSING_VALUE,
                f"the Stellar Asset Contract has no function {fn} on the devnet",
            )
        arity, handler = table[fn]
        if len(args) != arity:
            raise HostError(
                ErrType.SCE_VALUE,
                ErrCode.SCEC_UNEXPECTED_SIZE,
                f"{fn} takes {arity} arguments, got {len(args)}",
            )
        return handler(host, contract, args)

    # ---- helpers -------------------------------------------------------------------

    def _fail(self, contract: str, error: AssetError, detail: str) -> HostError:
        return HostError.contract_error(int(error), contract, detail)

    def _metadata(self, host: Host, c: str) -> dict[str, stellar_xdr.SCVal]:
        val = host.instance_get(c, v.symbol("METADATA"))
        assert val is not None
        return v.struct_fields(val, ("decimal", "name", "symbol"))

    def _asset(self, host: Host, c: str) -> tuple[str, str]:
        name = self._metadata(host, c)["name"]
        assert name.str is not None
        code, issuer = bytes(name.str.sc_string).decode().split(":", 1)
        return code, issuer

    def _name_val(self, host: Host, c: str) -> stellar_xdr.SCVal:
        return self._metadata(host, c)["name"]

    def _admin_addr(self, host: Host, c: str) -> str:
        val = host.instance_get(c, admin_key())
        if val is None:
            raise self._fail(c, AssetError.INTERNAL_ERROR, "admin is missing")
        return v.as_address(val)

    def _amount(self, c: str, val: stellar_xdr.SCVal) -> int:
        amount = v.as_i128(val)
        if amount < 0:
            raise self._fail(
                c, AssetError.NEGATIVE_AMOUNT, f"negative amount is not allowed: {amount}"
            )
        return amount

    def _trustline(self, host: Host, c: str, account: str) -> TrustlineRec:
        code, issuer = self._asset(host, c)
        entry = host.get_entry(trustline_key(account, code, issuer))
        if entry is None:
            raise self._fail(
                c, AssetError.TRUSTLINE_MISSING, "trustline entry is missing for account"
            )
        return TrustlineRec.from_data(entry.data)

    def _authorized_line(self, host: Host, c: str, holder: str) -> TrustlineRec:
        """The holder's trustline, checked first for existence (#13) and authorization (#11)."""
        tl = self._trustline(host, c, holder)
        if not tl.flags & AUTHORIZED_FLAG:
            raise self._fail(c, AssetError.BALANCE_DEAUTHORIZED, "balance is deauthorized")
        return tl

    def _read_balance(self, host: Host, c: str, holder: str) -> int:
        _, issuer = self._asset(host, c)
        if v.is_account(holder):
            if holder == issuer:
                return I64_MAX
            return self._trustline(host, c, holder).balance
        val = host.data_get(c, balance_key(holder), Durability.PERSISTENT)
        if val is None:
            return 0
        return v.as_i128(v.struct_fields(val, ("amount", "authorized", "clawback"))["amount"])

    def _spend(self, host: Host, c: str, holder: str, amount: int) -> None:
        _, issuer = self._asset(host, c)
        if v.is_account(holder):
            if holder == issuer:
                return  # the issuer's balance is unlimited: paying out mints
            tl = self._authorized_line(host, c, holder)
            if amount > I64_MAX:
                raise self._fail(c, AssetError.OVERFLOW, "spent amount is too large for an i64")
            if tl.balance < amount:
                raise self._fail(
                    c,
                    AssetError.INSUFFICIENT_BALANCE,
                    "resulting balance is not within the allowed range",
                )
            self._write_trustline(host, replace(tl, balance=tl.balance - amount))
            return
        balance = self._read_balance(host, c, holder)
        if balance < amount:
            raise self._fail(
                c, AssetError.INSUFFICIENT_BALANCE, f"balance is not sufficient to spend: {balance}"
            )
        self._write_contract_balance(host, c, holder, balance - amount)

    def _receive(self, host: Host, c: str, holder: str, amount: int) -> None:
        _, issuer = self._asset(host, c)
        if v.is_account(holder):
            if holder == issuer:
                return  # paying the issuer burns
            tl = self._authorized_line(host, c, holder)
            if amount > I64_MAX:
                raise self._fail(c, AssetError.OVERFLOW, "received amount is too large for an i64")
            new = tl.balance + amount
            if new > tl.limit:  # the limit is at most i64::MAX, so this covers overflow too
                raise self._fail(
                    c,
                    AssetError.INSUFFICIENT_BALANCE,
                    "resulting balance is not within the allowed range",
                )
            self._write_trustline(host, replace(tl, balance=new))
            return
        balance = self._read_balance(host, c, holder)
        if balance + amount > v.I128_MAX:
            raise self._fail(c, AssetError.OVERFLOW, "balance overflows i128")
        self._write_contract_balance(host, c, holder, balance + amount)

    def _write_trustline(self, host: Host, tl: TrustlineRec) -> None:
        host.put_entry(trustline_key(tl.account_id, tl.code, tl.issuer), tl.to_data(), None)

    def _write_contract_balance(self, host: Host, c: str, holder: str, amount: int) -> None:
        host.data_set(
            c,
            balance_key(holder),
            v.struct(
                {
                    "amount": v.i128(amount),
                    "authorized": v.boolean(True),
                    "clawback": v.boolean(False),
                }
            ),
            Durability.PERSISTENT,
        )

    # ---- functions -----------------------------------------------------------------

    def _balance(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        return v.i128(self._read_balance(host, c, v.as_address(args[0])))

    def _authorized(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        holder = v.as_address(args[0])
        _, issuer = self._asset(host, c)
        if not v.is_account(holder) or holder == issuer:
            return v.boolean(True)
        return v.boolean(bool(self._trustline(host, c, holder).flags & AUTHORIZED_FLAG))

    def _transfer(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        source = v.as_address(args[0])
        # Since protocol 23 the destination may be a muxed account: the SAC pays the account
        # and reports the id in the event's data.
        dest, muxed_id = v.as_destination(args[1])
        amount = self._amount(c, args[2])
        host.require_auth(source)
        self._spend(host, c, source, amount)
        self._receive(host, c, dest, amount)
        _, issuer = self._asset(host, c)
        host.emit(
            *token_events.movement(
                source,
                dest,
                issuer,
                self._name_val(host, c),
                amount,
                None if muxed_id is None else v.u64(muxed_id),
            )
        )
        return v.void()

    def _burn(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        source = v.as_address(args[0])
        amount = self._amount(c, args[1])
        host.require_auth(source)
        self._spend(host, c, source, amount)
        host.emit(*token_events.burn(source, self._name_val(host, c), amount))
        return v.void()

    def _mint(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        dest = v.as_address(args[0])
        amount = self._amount(c, args[1])
        host.require_auth(self._admin_addr(host, c))
        self._receive(host, c, dest, amount)
        host.emit(*token_events.mint(dest, self._name_val(host, c), amount))
        return v.void()

    def _set_admin(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        new_admin = v.as_address(args[0])
        admin = self._admin_addr(host, c)
        host.require_auth(admin)
        host.instance_set(c, admin_key(), v.address(new_admin))
        host.emit(
            [v.symbol("set_admin"), v.address(admin), self._name_val(host, c)], v.address(new_admin)
        )
        return v.void()

    def _decimals(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        return self._metadata(host, c)["decimal"]

    def _name(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        return self._metadata(host, c)["name"]

    def _symbol(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        return self._metadata(host, c)["symbol"]

    def _admin(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        return v.address(self._admin_addr(host, c))
