"""The pooler agent's metrics (served on `pooler_metrics_port` when set): hash rate,
works submitted / failed / late, the zeros each work reached, and the machine's CPU and
memory, which the heartbeat also carries to the pool (its `pooler_cpu` and
`pooler_memory` alerts).

CPU and memory come from /proc (Linux, where the agent runs in practice); elsewhere
they read as unknown (0 in the heartbeat, which no alert fires on). No label holds
more than a fixed set of values.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

HASH_RATE = Gauge(
    "kalepool_pooler_hashes_per_second", "Hash rate over every miner thread of this agent."
)
WORKS = Counter(
    "kalepool_pooler_works_total",
    "Work results, by outcome: submitted (sent and landed), failed, late (the block"
    " closed before it could be sent or land).",
    ["outcome"],
)
ZEROS = Histogram(
    "kalepool_pooler_work_zeros",
    "Leading zero nibbles of each work's hash (the contract rewards more zeros).",
    buckets=(2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16),
)
CPU_PERCENT = Gauge("kalepool_pooler_cpu_percent", "CPU of this machine in use, in percent.")
MEMORY_PERCENT = Gauge(
    "kalepool_pooler_memory_percent", "Memory of this machine in use, in percent."
)

_PROC = Path("/proc")


class MachineLoad:
    """The machine's CPU use between two reads of /proc/stat, and its memory in use."""

    def __init__(self, proc: Path = _PROC) -> None:
        self.proc = proc
        self._last: tuple[int, int] | None = self._cpu_times()

    def _cpu_times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies since boot; None where /proc is not there."""
        try:
            first = (self.proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        values = [int(v) for v in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    def cpu_percent(self) -> int:
        """CPU in use since the last call (0 when unknown)."""
        now = self._cpu_times()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return 0
        return max(0, min(100, round(100 * (now[0] - last[0]) / (now[1] - last[1]))))

    def memory_percent(self) -> int:
        """Memory in use: 100 less what MemAvailable says (0 when unknown)."""
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (self.proc / "meminfo").read_text().splitlines():
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0])
        total, available = fields.get("MemTotal"), fields.get("MemAvailable")
        if not total or available is None:
            return 0
        return max(0, min(100, round(100 * (total - available) / total)))

    def sample(self) -> tuple[int, int]:
        """(cpu, memory) in percent, and the gauges set to them."""
        cpu, memory = self.cpu_percent(), self.memory_percent()
        CPU_PERCENT.set(cpu)
        MEMORY_PERCENT.set(memory)
        return cpu, memory
