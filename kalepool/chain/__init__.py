"""The chain client: everything that talks to a Stellar RPC server about KALE.

`config` resolves which network and contracts; `client` holds the RPC connection;
`farm_state` reads the farm and accounts; `calls` builds transactions; `submit` signs,
records, sends and follows them safely; `events` reads the asset's token events and
`farm_calls` what a farm transaction did (its call, the pails it created and removed);
`plantable` which block a plant may name now;
`errors` and `faults` say what went wrong and whose fault it was. See docs/chain.md.
"""

from kalepool.chain.calls import (
    TxKind,
    UnsignedTx,
    authorize,
    build_close,
    build_harvest,
    build_payment,
    build_plant,
    build_trustline,
    build_work,
)
from kalepool.chain.client import ChainClient, LedgerInfo, RetryPolicy
from kalepool.chain.config import ChainConfig, ChainConfigError, resolve_chain_config
from kalepool.chain.errors import (
    AccountNotFoundError,
    ChainDataError,
    ChainError,
    ChainUnavailableError,
    ContractError,
    ContractKind,
    EventsOutOfRangeError,
    NotAFarmCallError,
    SimulationError,
)
from kalepool.chain.events import EventPage, TokenEvent, read_token_events
from kalepool.chain.farm_calls import (
    FarmCall,
    PailChanges,
    pail_changes_of,
    read_farm_call,
    read_pail_changes,
)
from kalepool.chain.farm_state import (
    AccountState,
    Block,
    CurrentBlock,
    FarmBlock,
    FarmInstance,
    Pail,
    Trustline,
    current_block,
    kale_balance,
    read_account,
    read_accounts,
    read_block,
    read_farm,
    read_pail,
    read_pails,
)
from kalepool.chain.faults import Fault, attribute_fault
from kalepool.chain.plantable import Plantable, PlantableReads, read_plantable
from kalepool.chain.submit import (
    SignedTx,
    SubmitEvent,
    SubmitStep,
    TxOutcome,
    TxStatus,
    reconcile,
    sign,
    submit,
)
from kalepool.protocol import AssetError, FarmError

__all__ = [
    "AccountNotFoundError",
    "AccountState",
    "AssetError",
    "Block",
    "ChainClient",
    "ChainConfig",
    "ChainConfigError",
    "ChainDataError",
    "ChainError",
    "ChainUnavailableError",
    "ContractError",
    "ContractKind",
    "CurrentBlock",
    "EventPage",
    "EventsOutOfRangeError",
    "FarmBlock",
    "FarmCall",
    "FarmError",
    "FarmInstance",
    "Fault",
    "LedgerInfo",
    "NotAFarmCallError",
    "Pail",
    "PailChanges",
    "Plantable",
    "PlantableReads",
    "RetryPolicy",
    "SignedTx",
    "SimulationError",
    "SubmitEvent",
    "SubmitStep",
    "TokenEvent",
    "Trustline",
    "TxKind",
    "TxOutcome",
    "TxStatus",
    "UnsignedTx",
    "attribute_fault",
    "authorize",
    "build_close",
    "build_harvest",
    "build_payment",
    "build_plant",
    "build_trustline",
    "build_work",
    "current_block",
    "kale_balance",
    "pail_changes_of",
    "read_account",
    "read_accounts",
    "read_block",
    "read_farm",
    "read_farm_call",
    "read_pail",
    "read_pail_changes",
    "read_pails",
    "read_plantable",
    "read_token_events",
    "reconcile",
    "resolve_chain_config",
    "sign",
    "submit",
]
