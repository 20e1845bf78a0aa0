"""The import walls bite: each import-linter contract in pyproject.toml fails on a
forbidden import planted in a copy of the tree.

`make lint` proves the tree keeps every contract; this proves no contract is vacuous (a
misspelt module, an ignore that swallows everything). Each plant is a lazy import inside
a function, the kind the command line uses, so it also shows that those are seen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

#: contract id -> (file to plant in, the module it imports there): each one forbidden.
PLANTS = {
    "core": ("kalepool/settings.py", "pool_service.server"),
    "root": ("kalepool/chain/client.py", "kalepool.app.cli"),
    "wallet": ("wallet_service/service.py", "pooler_agent.agent"),
    "pool": ("pool_service/planting.py", "wallet_service.keystore"),
    "pooler": ("pooler_agent/agent.py", "kalepool.db.reads"),
    "web": ("farmer_web/pool.py", "kalepool.db.reads"),
    "devnet": ("kale_devnet/farm.py", "kalepool.settings"),
    "protocol": ("kalepool/protocol.py", "kalepool.tls"),
    "devnet-users": ("pool_service/server.py", "kale_devnet"),
    "one-root": ("pool_service/server.py", "pooler_agent.agent"),
}

PLANT = """

def _planted() -> object:
    import {module} as planted

    return planted
"""


def test_every_contract_has_a_plant() -> None:
    assert {contract["id"] for contract in CONFIG["contracts"]} == set(PLANTS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and the contracts (no caches, no build outputs)."""
    copy = tmp_path_factory.mktemp("tree")
    for package in CONFIG["root_packages"]:
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    kept = lint(copy)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the copy keeps every contract
    return copy


def lint(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on ``tree`` (only ``contracts``, when given)."""
    assert LINT_IMPORTS is not None, "import-linter is not installed in this environment"
    # lint-imports puts its working directory first on sys.path: the copy is what it reads.
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", *(f"--contract={c}" for c in contracts)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("contract", sorted(PLANTS))
def test_a_planted_forbidden_import_breaks_the_contract(tree: Path, contract: str) -> None:
    path, module = PLANTS[contract]
    target = tree / path
    original = target.read_text()
    name = next(c["name"] for c in CONFIG["contracts"] if c["id"] == contract)
    target.write_text(original + PLANT.format(module=module))
    try:
        broken = lint(tree, contract)
    finally:
        target.write_text(original)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"{name} BROKEN" in " ".join(broken.stdout.split()), broken.stdout
    assert module in broken.stdout  # the report names the planted import
