"""The local devnet: a Stellar RPC server with the KALE farm contract's real semantics."""

from kalepool.devnet.config import DevnetConfig
from kalepool.devnet.faults import FaultConfig
from kalepool.devnet.network import DevnetIdentity, identity
from kalepool.devnet.server import DevnetServer, DevnetThread

__all__ = [
    "DevnetConfig",
    "DevnetIdentity",
    "DevnetServer",
    "DevnetThread",
    "FaultConfig",
    "identity",
]
