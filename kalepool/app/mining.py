"""`kale-pool mine`: mine one farmer's pail for a while, showing the hash rate.

A tool for sizing a pooler machine: it runs the same search a pooler runs
(`miner_ext`, every core by default), shows the rate live, then the best hash.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.text import Text

import miner_ext
from kalepool.protocol import farmer_key

# How often the live line is redrawn.
REFRESH_SECONDS = 0.25


def parse_entropy(text: str) -> bytes:
    """A block's entropy: 64 hex digits (optionally 0x-prefixed), or its base64 form."""
    value = text.strip()
    hex_digits = value[2:] if value.lower().startswith("0x") else value
    if len(hex_digits) == 64:
        try:
            return bytes.fromhex(hex_digits)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return raw
    raise ValueError("entropy must be 32 bytes: 64 hex digits or 44 base64 characters")


@dataclass(frozen=True, slots=True)
class MineReport:
    """What a `mine` run found and how fast it went."""

    result: miner_ext.SearchResult
    backend: str
    threads: int
    interrupted: bool

    @property
    def rate(self) -> float:
        """Average hashes per second."""
        return self.result.hashes / self.result.elapsed if self.result.elapsed > 0 else 0.0


def _mhs(rate: float) -> str:
    return f"{rate / 1e6:.2f} MH/s"


def _live_line(progress: miner_ext.SearchResult, rate: float, seconds: float) -> Text:
    line = Text()
    line.append(f"{_mhs(rate):>12}", style="bold green")
    line.append(f"  {progress.hashes:,} hashes  {progress.elapsed:5.1f}/{seconds:g} s  ")
    line.append(f"best {progress.zeros} zeros", style="bold")
    line.append(f" at nonce {progress.nonce}")
    return line


def mine(
    index: int,
    entropy: bytes,
    farmer: bytes,
    seconds: float,
    *,
    threads: int | None = None,
    backend: str | None = None,
    target_zeros: int | None = None,
    console: Console | None = None,
) -> MineReport:
    """Search for `seconds` (or until `target_zeros`), redrawing the rate; Ctrl-C stops early.

    Raises ValueError for bad input (before anything runs).
    """
    console = console or Console(soft_wrap=True)
    search = miner_ext.Search(
        index,
        entropy,
        farmer,
        seconds=seconds,
        threads=threads,
        backend=backend,
        target_zeros=target_zeros,
    )
    used_threads = threads or miner_ext.default_threads()
    interrupted = False
    with search, Live(console=console, refresh_per_second=8, transient=True) as live:
        last_hashes, last_time = 0, time.perf_counter()
        try:
            while not search.done():
                time.sleep(REFRESH_SECONDS)
                progress = search.progress()
                now = time.perf_counter()
                rate = (progress.hashes - last_hashes) / max(now - last_time, 1e-9)
                last_hashes, last_time = progress.hashes, now
                live.update(_live_line(progress, rate, seconds))
        except KeyboardInterrupt:
            search.cancel()
            interrupted = True
        result = search.result()
    return MineReport(result, search.backend, used_threads, interrupted)


def print_report(report: MineReport, index: int, console: Console | None = None) -> None:
    """The final lines: the best hash (what `work` would be submitted with) and the rate."""
    console = console or Console(soft_wrap=True)
    r = report.result
    if report.interrupted:
        console.print("interrupted: best so far", style="yellow")
    console.print(f"block index {index}")
    console.print(f"best nonce  {r.nonce}")
    console.print(f"best hash   {r.hash.hex()}")
    console.print(f"zeros       {r.zeros}")
    console.print(
        f"rate        {_mhs(report.rate)} ({r.hashes:,} hashes in {r.elapsed:.2f} s, "
        f"{report.threads} threads, {report.backend} kernel; stopped: {r.reason})"
    )


def run_mine(
    index: int,
    entropy: str,
    farmer: str,
    seconds: float,
    threads: int | None = None,
    backend: str | None = None,
    target_zeros: int | None = None,
) -> int:
    """The `kale-pool mine` command; returns the exit status (130 after Ctrl-C)."""
    key = farmer_key(farmer)
    raw_entropy = parse_entropy(entropy)
    console = Console(soft_wrap=True)
    console.print(
        f"mining block {index} for {farmer.strip()} for {seconds:g} s "
        f"on {threads or miner_ext.default_threads()} threads "
        f"(kernels here: {', '.join(miner_ext.backends())})"
    )
    report = mine(
        index,
        raw_entropy,
        key,
        seconds,
        threads=threads,
        backend=backend,
        target_zeros=target_zeros,
        console=console,
    )
    print_report(report, index, console)
    return 130 if report.interrupted else 0
