"""The pooler agent's machine figures, read from a /proc of our making, and its metrics
endpoint served from settings."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from kalepool.settings import Settings
from pooler_agent.agent import serve_pooler_metrics
from pooler_agent.metrics import CPU_PERCENT, MachineLoad


def _proc(root: Path, busy: int, idle: int, total_kb: int, available_kb: int) -> None:
    # user nice system idle iowait irq softirq
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0\ncpu0 1 2 3 4\n")
    (root / "meminfo").write_text(
        f"MemTotal:       {total_kb} kB\nMemFree:        1 kB\nMemAvailable:   {available_kb} kB\n"
    )


def test_cpu_is_measured_between_reads_and_memory_from_what_is_available(tmp_path: Path) -> None:
    _proc(tmp_path, busy=100, idle=900, total_kb=1000, available_kb=50)
    load = MachineLoad(tmp_path)
    _proc(tmp_path, busy=195, idle=905, total_kb=1000, available_kb=50)
    assert load.sample() == (95, 95)
    assert CPU_PERCENT._value.get() == 95
    _proc(tmp_path, busy=195, idle=1005, total_kb=1000, available_kb=1000)
    assert load.sample() == (0, 0)


def test_without_proc_the_figures_are_unknown(tmp_path: Path) -> None:
    load = MachineLoad(tmp_path / "none")
    assert load.sample() == (0, 0)


def test_the_agent_serves_its_metrics_when_a_port_is_set(tmp_path: Path) -> None:
    assert serve_pooler_metrics(Settings(_env_file=None, data_dir=tmp_path)) is None
    server = serve_pooler_metrics(
        Settings(_env_file=None, data_dir=tmp_path, pooler_metrics_port=0)
    )
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics") as got:
            text = got.read().decode()
        for name in ("kalepool_pooler_hashes_per_second", "kalepool_pooler_works_total"):
            assert name in text
    finally:
        server.shutdown()
        server.server_close()
