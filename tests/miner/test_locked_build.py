"""Every build of miner_ext uses miner_ext/Cargo.lock as committed.

Cargo rewrites a lock that disagrees with Cargo.toml unless told `--locked`; then a
build quietly takes whatever versions are newest that day. Each way the crate is built
says `--locked`: the wheel (pyproject's [tool.maturin], read by pip and maturin alike),
the Makefile's cargo commands and the image's `maturin build`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_is_built_locked() -> None:
    maturin = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"]
    assert maturin.get("locked") is True


def test_the_makefiles_cargo_builds_are_locked() -> None:
    makefile = (ROOT / "Makefile").read_text()
    flags = re.search(r"^CARGO_BUILD_FLAGS := (.*)$", makefile, re.M)
    assert flags is not None and "--locked" in flags.group(1).split()
    # Every cargo command that resolves dependencies (all but fmt) takes those flags.
    commands = re.findall(r"^\t\$\(CARGO\) (\w+) (.*)$", makefile, re.M)
    assert {name for name, _ in commands} >= {"clippy", "test"}
    for name, args in commands:
        if name != "fmt":
            assert "$(CARGO_BUILD_FLAGS)" in args.split(), (name, args)


def test_the_images_wheel_is_built_locked() -> None:
    builds = re.findall(r"maturin build\b.*", (ROOT / "deploy" / "Containerfile").read_text())
    assert builds and all("--locked" in b.split() for b in builds), builds
