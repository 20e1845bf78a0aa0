"""Fault injection: failing RPC calls, added latency, lost sendTransaction answers, stalls.

Counters (`fail_next`, `lose_next_sends`) make single faults deterministic for tests;
rates (`error_rate`, `lost_send_rate`) drive chaos runs from a seeded random generator.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ErrorKind = Literal["http", "rpc"]
LostMode = Literal["disconnect", "http"]


@dataclass
class FaultConfig:
    """What to break. Method names are JSON-RPC method names; "*" applies to every one."""

    error_rate: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, int] = field(default_factory=dict)
    fail_next: dict[str, int] = field(default_factory=dict)
    error_kind: ErrorKind = "http"
    lost_send_rate: float = 0.0
    lose_next_sends: int = 0
    lost_send_mode: LostMode = "disconnect"
    stalled: bool = False
    stall_until: float = 0.0  # wall-clock time until which no ledger closes
    seed: int | None = None

    def validate(self) -> None:
        for method, rate in self.error_rate.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"error_rate for {method} must be between 0 and 1")
        for method, ms in self.latency_ms.items():
            if not 0 <= ms <= 600_000:
                raise ValueError(f"latency_ms for {method} must be between 0 and 600000")
        for method, n in self.fail_next.items():
            if n < 0:
                raise ValueError(f"fail_next for {method} must not be negative")
        if not 0.0 <= self.lost_send_rate <= 1.0:
            raise ValueError("lost_send_rate must be between 0 and 1")
        if self.lose_next_sends < 0:
            raise ValueError("lose_next_sends must not be negative")
        if self.error_kind not in ("http", "rpc"):
            raise ValueError('error_kind must be "http" or "rpc"')
        if self.lost_send_mode not in ("disconnect", "http"):
            raise ValueError('lost_send_mode must be "disconnect" or "http"')

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = set(FaultConfig.__dataclass_fields__)


class FaultInjector:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply a partial update (unknown fields or bad values change nothing)."""
        unknown = set(changes) - _FIELDS - {"stall_seconds"}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        merged = {**self.config.to_json(), **{k: v for k, v in changes.items() if k in _FIELDS}}
        if "stall_seconds" in changes:
            seconds = changes["stall_seconds"]
            if not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError("stall_seconds must be a non-negative number")
            merged["stall_until"] = time.time() + float(seconds)
        try:
            candidate = FaultConfig(**merged)
            _check_types(candidate)
            candidate.validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        if "seed" in changes:  # setting a seed (again) restarts its sequence
            self._rng = random.Random(candidate.seed)
        self.config = candidate
        return candidate

    def _lookup(self, table: dict[str, Any], method: str) -> Any:
        return table.get(method, table.get("*"))

    def latency(self, method: str) -> float:
        ms = self._lookup(self.config.latency_ms, method)
        return 0.0 if not ms else float(ms) / 1000.0

    def should_fail(self, method: str) -> bool:
        for key in (method, "*"):
            left = self.config.fail_next.get(key, 0)
            if left > 0:
                self.config.fail_next[key] = left - 1
                return True
        rate = self._lookup(self.config.error_rate, method)
        return bool(rate) and self._rng.random() < float(rate)

    def lose_send(self) -> bool:
        if self.config.lose_next_sends > 0:
            self.config.lose_next_sends -= 1
            return True
        rate = self.config.lost_send_rate
        return bool(rate) and self._rng.random() < rate

    def is_stalled(self) -> bool:
        return self.config.stalled or time.time() < self.config.stall_until


def _check_types(cfg: FaultConfig) -> None:
    def mapping(name: str, value: object, kind: type | tuple[type, ...]) -> None:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise ValueError(f"{name} must map method names to numbers")

    mapping("error_rate", cfg.error_rate, (int, float))
    mapping("latency_ms", cfg.latency_ms, int)
    mapping("fail_next", cfg.fail_next, int)
    if not isinstance(cfg.stalled, bool):
        raise ValueError("stalled must be true or false")
    for name in ("lost_send_rate", "stall_until"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
    if isinstance(cfg.lose_next_sends, bool) or not isinstance(cfg.lose_next_sends, int):
        raise ValueError("lose_next_sends must be an integer")
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int)):
        raise ValueError("seed must be an integer or null")
