"""Devnet settings: the clock, the farm's block interval, network parameters, persistence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kale_devnet.faults import FaultConfig
from kalepool import protocol

XLM = 10_000_000  # stroops


@dataclass
class DevnetConfig:
    """How a devnet runs. `manual` ledgers close only on request (tests)."""

    host: str = "127.0.0.1"
    port: int = 8000
    ledger_seconds: int = 5
    block_seconds: int = protocol.BLOCK_INTERVAL_SECONDS
    state_path: Path | None = None
    manual: bool = False
    # The first ledger's close time; None takes the wall clock at genesis.
    genesis_time: int | None = None
    # Ledgers a new temporary entry lives (the network's minimum temporary TTL: a day).
    temp_ttl_ledgers: int = 17_280
    persistent_ttl_ledgers: int = 2_073_600
    max_entry_ttl_ledgers: int = 3_110_400
    base_fee: int = 100
    base_reserve: int = 5_000_000
    max_tx_per_ledger: int = 1_000
    # How many ledgers of transactions, events and headers the RPC keeps.
    history_ledgers: int = 17_280
    # How many ledgers one getEvents request scans at most (Stellar RPC: 10,000).
    event_scan_ledgers: int = 10_000
    friendbot_amount: int = 10_000 * XLM
    # Start the farm at this block index (mainnet is tens of thousands of blocks in, where
    # the reward has decayed); 0 starts it as a freshly constructed farm.
    genesis_farm_index: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)

    def validate(self) -> None:
        """Reject settings the chain cannot run with, with a clear message."""
        if self.ledger_seconds < 1:
            raise ValueError("ledger_seconds must be at least 1")
        if self.block_seconds < 1:
            raise ValueError("block_seconds must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.temp_ttl_ledgers < 1 or self.history_ledgers < 1 or self.event_scan_ledgers < 1:
            raise ValueError(
                "temp_ttl_ledgers, history_ledgers and event_scan_ledgers must be at least 1"
            )
        if not 0 <= self.genesis_farm_index < 2**32 - 1:
            raise ValueError("genesis_farm_index must be a u32")
        if self.max_tx_per_ledger < 1:
            raise ValueError("max_tx_per_ledger must be at least 1")
        self.faults.validate()
