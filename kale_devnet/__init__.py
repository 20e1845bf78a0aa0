"""The local devnet: a Stellar RPC server with the KALE farm contract's real semantics."""

from kale_devnet.config import DevnetConfig
from kale_devnet.faults import FaultConfig
from kale_devnet.network import DevnetIdentity, identity
from kale_devnet.persist import copy_state
from kale_devnet.server import DevnetServer, DevnetThread

__all__ = [
    "DevnetConfig",
    "DevnetIdentity",
    "DevnetServer",
    "DevnetThread",
    "FaultConfig",
    "copy_state",
    "identity",
]
