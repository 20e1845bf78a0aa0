"""Benchmark of the KALE nonce search, beside references measured in the same run.

Prints, for this machine:

* miner_ext MH/s on one thread for every kernel this CPU runs, and on all cores
  for the default kernel;
* OpenSSL's SHA3-256 rate on 64-byte inputs (``openssl speed -evp sha3-256``):
  one Keccak-f[1600] permutation per hash, as the 76-byte KALE preimage needs;
* the pure-Python reference (pycryptodome's Keccak, as ``kalepool.protocol`` uses it);
* the ratios: per-core speed-up over both references, and the 1 -> N core scaling.

Each miner measurement also records the CPU time the process got, so a run on
a shared machine shows how many CPUs it actually obtained and the rate per
CPU-second (the kernel's speed, whatever else runs). Each round measures
everything once; ``--rounds`` repeats it so the noise shows, and the summary
gives the median and the best round. ``--json`` also writes the numbers.

Usage: python bench/miner_bench.py [--seconds 2] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from Crypto.Hash import keccak

import miner_ext

# A fixed, arbitrary assignment: the rate does not depend on it.
INDEX = 30_000
ENTROPY = bytes(range(32))
FARMER = bytes(range(32, 64))

# The targets, for the PASS/FAIL column.
TARGET_AVX512_PER_CORE = 15e6
TARGET_AVX2_PER_CORE = 9e6
TARGET_SCALING = 1.8


@dataclass
class Rate:
    """One miner measurement."""

    wall: float  # hashes per wall-clock second
    cpus: float  # CPU seconds the process used per wall-clock second

    @property
    def per_cpu(self) -> float:
        """Hashes per CPU-second: the speed of the code, whatever else runs."""
        return self.wall / self.cpus if self.cpus > 0 else 0.0


@dataclass
class Round:
    """Everything one round measured (rates in hashes per second)."""

    kernels_1t: dict[str, Rate] = field(default_factory=dict)
    all_cores: Rate = field(default_factory=lambda: Rate(0.0, 0.0))
    all_cores_threads: int = 0
    openssl: float | None = None
    pycryptodome: float = 0.0


def cpu_model() -> str:
    """The CPU model name as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that matter to the kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    wanted = ["avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512ifma", "avx512vbmi"]
    return [f for f in wanted if f in flags]


def miner_rate(seconds: float, threads: int, backend: str) -> Rate:
    """Rate of one search bounded by time only, and the CPU share it got."""
    cpu0 = time.process_time()
    result = miner_ext.search(
        INDEX, ENTROPY, FARMER, seconds=seconds, threads=threads, backend=backend
    )
    cpu = time.process_time() - cpu0
    return Rate(wall=result.hashes / result.elapsed, cpus=cpu / result.elapsed)


def openssl_rate(seconds: float) -> float | None:
    """OpenSSL SHA3-256 hashes per second on 64-byte inputs (one permutation each)."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    whole = max(1, round(seconds))
    cmd = [exe, "speed", "-evp", "sha3-256", "-bytes", "64", "-seconds", str(whole), "-mr"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=whole + 60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    # "+R:<count>:sha3-256:<seconds>": hashes done and the time they took
    # (OpenSSL 3 prints these progress lines on stderr, the summary on stdout).
    out = done.stdout + "\n" + done.stderr
    match = re.search(r"^\+R:(\d+):[^:]+:([\d.]+)$", out, re.MULTILINE)
    if match is None:
        return None
    count, took = int(match.group(1)), float(match.group(2))
    return count / took if took > 0 else None


def pycryptodome_rate(seconds: float) -> float:
    """Reference Keccak-256 from Python over real 76-byte preimages."""
    prefix = INDEX.to_bytes(4, "big")
    suffix = ENTROPY + FARMER
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            keccak.new(digest_bits=256, data=prefix + n.to_bytes(8, "big") + suffix).digest()
            n += 1
        if time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start)


def measure(seconds: float) -> Round:
    """One round: every kernel on one thread, the default kernel on all cores, references."""
    r = Round()
    for backend in miner_ext.backends():
        r.kernels_1t[backend] = miner_rate(seconds, 1, backend)
    best = miner_ext.backends()[-1]
    r.all_cores_threads = miner_ext.default_threads()
    r.all_cores = miner_rate(seconds, r.all_cores_threads, best)
    r.openssl = openssl_rate(seconds)
    r.pycryptodome = pycryptodome_rate(min(seconds, 2.0))
    return r


def mhs(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate / 1e6:6.2f} MH/s"


def verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "FAIL"


def target_note(backend: str, rate: float) -> str:
    if backend == "avx512":
        return f"target >= 15: {verdict(rate, TARGET_AVX512_PER_CORE)}"
    if backend == "avx2":
        return f"target >= 9: {verdict(rate, TARGET_AVX2_PER_CORE)}"
    return ""


def miner_line(label: str, rate: Rate, note: str = "") -> str:
    return (
        f"  {label:<26}: {mhs(rate.wall)}  ({rate.cpus:4.2f} CPUs obtained, "
        f"{mhs(rate.per_cpu)} per CPU-second)" + (f"  {note}" if note else "")
    )


def report(i: int, r: Round) -> None:
    """Print one round."""
    best = miner_ext.backends()[-1]
    best_1t = r.kernels_1t[best].wall
    print(f"\nround {i}")
    for backend, rate in r.kernels_1t.items():
        label = f"miner_ext {backend}, 1 thread"
        print(miner_line(label, rate, target_note(backend, rate.wall)))
    scaling = r.all_cores.wall / best_1t
    note = f"x{scaling:.2f} over 1 thread"
    if r.all_cores_threads == 2:
        note += f", target >= x{TARGET_SCALING}: {verdict(scaling, TARGET_SCALING)}"
    print(miner_line(f"miner_ext {best}, {r.all_cores_threads} threads", r.all_cores, note))
    print(f"  {'openssl sha3-256, 64 B':<26}: {mhs(r.openssl)}")
    print(f"  {'pycryptodome from Python':<26}: {mhs(r.pycryptodome)}")
    if r.openssl:
        scalar = r.kernels_1t["scalar"].wall
        print(f"  ratio {best} / OpenSSL, per core : x{best_1t / r.openssl:.2f}")
        print(f"  ratio scalar / OpenSSL, per core : x{scalar / r.openssl:.2f}")
    print(f"  ratio {best} / pycryptodome, per core: x{best_1t / r.pycryptodome:.0f}")


def summary(rounds: list[Round]) -> None:
    """Median and best round of each figure."""
    best = miner_ext.backends()[-1]

    def line(label: str, values: list[float], fmt: str = "mhs") -> None:
        show = mhs if fmt == "mhs" else (lambda v: f"x{v:.2f}")
        print(f"  {label:<34}: median {show(statistics.median(values))}, best {show(max(values))}")

    print(f"\nsummary over {len(rounds)} rounds")
    for backend in miner_ext.backends():
        line(f"{backend}, 1 thread", [r.kernels_1t[backend].wall for r in rounds])
        line(
            f"{backend}, 1 thread, per CPU-second", [r.kernels_1t[backend].per_cpu for r in rounds]
        )
    n = rounds[0].all_cores_threads
    line(f"{best}, {n} threads", [r.all_cores.wall for r in rounds])
    line(f"{best}, {n} threads, per CPU-second", [r.all_cores.per_cpu for r in rounds])
    line(
        f"scaling 1 -> {n} threads",
        [r.all_cores.wall / r.kernels_1t[best].wall for r in rounds],
        "x",
    )
    line(f"CPUs obtained by {n} threads", [r.all_cores.cpus for r in rounds], "x")
    ossl = [r.openssl for r in rounds if r.openssl]
    if ossl:
        line("openssl sha3-256 (64 B)", ossl)
        line(
            f"ratio {best} / OpenSSL, per core",
            [r.kernels_1t[best].wall / r.openssl for r in rounds if r.openssl],
            "x",
        )
    line("pycryptodome", [r.pycryptodome for r in rounds])
    line(
        f"ratio {best} / pycryptodome, per core",
        [r.kernels_1t[best].wall / r.pycryptodome for r in rounds],
        "x",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each measures everything)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()

    print(f"machine : {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.machine()}")
    print(f"flags   : {' '.join(cpu_flags()) or 'none of interest'}")
    print(f"kernels : {', '.join(miner_ext.backends())} (default: {miner_ext.backends()[-1]})")
    try:
        load = os.getloadavg()
        print(f"load    : {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) at start")
    except OSError:
        pass

    rounds = []
    for i in range(1, args.rounds + 1):
        r = measure(args.seconds)
        rounds.append(r)
        report(i, r)

    summary(rounds)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": cpu_model(),
            "cpus": os.cpu_count(),
            "flags": cpu_flags(),
            "backends": miner_ext.backends(),
            "seconds": args.seconds,
            "rounds": [asdict(r) for r in rounds],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
