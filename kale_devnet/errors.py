"""Soroban host errors as the devnet raises them, with the contracts' error numbers."""

from __future__ import annotations

from stellar_sdk import xdr as stellar_xdr

_TYPE_NAMES = {
    stellar_xdr.SCErrorType.SCE_CONTRACT: "Contract",
    stellar_xdr.SCErrorType.SCE_WASM_VM: "WasmVm",
    stellar_xdr.SCErrorType.SCE_CONTEXT: "Context",
    stellar_xdr.SCErrorType.SCE_STORAGE: "Storage",
    stellar_xdr.SCErrorType.SCE_OBJECT: "Object",
    stellar_xdr.SCErrorType.SCE_CRYPTO: "Crypto",
    stellar_xdr.SCErrorType.SCE_EVENTS: "Events",
    stellar_xdr.SCErrorType.SCE_BUDGET: "Budget",
    stellar_xdr.SCErrorType.SCE_VALUE: "Value",
    stellar_xdr.SCErrorType.SCE_AUTH: "Auth",
}

_CODE_NAMES = {
    stellar_xdr.SCErrorCode.SCEC_ARITH_DOMAIN: "ArithDomain",
    stellar_xdr.SCErrorCode.SCEC_INDEX_BOUNDS: "IndexBounds",
    stellar_xdr.SCErrorCode.SCEC_INVALID_INPUT: "InvalidInput",
    stellar_xdr.SCErrorCode.SCEC_MISSING_VALUE: "MissingValue",
    stellar_xdr.SCErrorCode.SCEC_EXISTING_VALUE: "ExistingValue",
    stellar_xdr.SCErrorCode.SCEC_EXCEEDED_LIMIT: "ExceededLimit",
    stellar_xdr.SCErrorCode.SCEC_INVALID_ACTION: "InvalidAction",
    stellar_xdr.SCErrorCode.SCEC_INTERNAL_ERROR: "InternalError",
    stellar_xdr.SCErrorCode.SCEC_UNEXPECTED_TYPE: "UnexpectedType",
    stellar_xdr.SCErrorCode.SCEC_UNEXPECTED_SIZE: "UnexpectedSize",
}

ErrType = stellar_xdr.SCErrorType
ErrCode = stellar_xdr.SCErrorCode


class HostError(Exception):
    """A Soroban host error: `Error(Contract, #N)` or `Error(<Type>, <Code>)`."""

    def __init__(
        self,
        etype: stellar_xdr.SCErrorType,
        code: int | stellar_xdr.SCErrorCode,
        detail: str = "",
        contract: str | None = None,
    ) -> None:
        self.etype = etype
        self.code = code
        self.detail = detail
        # The contract that raised it: the same number means different things per contract.
        self.contract = contract
        # Set once the host has logged this error as a diagnostic event (logged only once).
        self.diagnosed = False
        super().__init__(self.display())

    @classmethod
    def contract_error(cls, number: int, contract: str, detail: str = "") -> HostError:
        return cls(ErrType.SCE_CONTRACT, number, detail, contract)

    def display(self) -> str:
        """The host's own rendering, e.g. `Error(Contract, #8)` or `Error(Auth, InvalidAction)`."""
        type_name = _TYPE_NAMES[self.etype]
        if self.etype == ErrType.SCE_CONTRACT:
            return f"Error({type_name}, #{int(self.code)})"
        assert isinstance(self.code, stellar_xdr.SCErrorCode)
        return f"Error({type_name}, {_CODE_NAMES[self.code]})"

    def sc_error(self) -> stellar_xdr.SCError:
        if self.etype == ErrType.SCE_CONTRACT:
            return stellar_xdr.SCError(
                type=self.etype, contract_code=stellar_xdr.Uint32(int(self.code))
            )
        assert isinstance(self.code, stellar_xdr.SCErrorCode)
        return stellar_xdr.SCError(type=self.etype, code=self.code)


def sc_error_display(err: stellar_xdr.SCError) -> str:
    """Render an SCError value the way the host prints it."""
    if err.type == ErrType.SCE_CONTRACT:
        assert err.contract_code is not None
        return f"Error(Contract, #{err.contract_code.uint32})"
    assert err.code is not None
    return f"Error({_TYPE_NAMES[err.type]}, {_CODE_NAMES[err.code]})"
