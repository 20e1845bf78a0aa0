"""The hashed lock files agree with pyproject.toml: each declared dependency is pinned
(`==`) with its hashes in the lock that installs it, and every pin of every lock carries
hashes (pip's --require-hashes refuses a file where one does not). A dependency added to
pyproject.toml without `make lock` fails here, not on a fresh machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^ ;\\]+)")


def _pins(lock: str) -> dict[str, list[str]]:
    """Each pinned package of a lock file and its hashes (a pin may repeat with markers)."""
    pins: dict[str, list[str]] = {}
    current: str | None = None
    for line in (ROOT / lock).read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins.setdefault(current, [])
        elif current and line.strip().startswith("--hash=sha256:"):
            pins[current].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock}: a line that is no `name==version` pin: {line!r}")
    return pins


def _names(requirements: list[str]) -> set[str]:
    own = canonicalize_name(PYPROJECT["project"]["name"])
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    return names - {own}  # `kale-pool[report]`: the project's own extras, resolved in


def _extra_closure(extra: str) -> list[str]:
    """An extra's requirements with the project's own extras it names expanded."""
    found: list[str] = []
    own = canonicalize_name(PYPROJECT["project"]["name"])
    for text in PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == own:
            for nested in requirement.extras:
                found += _extra_closure(nested)
        else:
            found.append(text)
    return found


@pytest.mark.parametrize(
    ("lock", "declared"),
    [
        ("requirements.lock", PYPROJECT["project"]["dependencies"]),
        (
            "requirements-dev.lock",
            PYPROJECT["project"]["dependencies"] + _extra_closure("dev"),
        ),
        ("requirements-build.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_each_declared_dependency_is_pinned_with_hashes(lock: str, declared: list[str]) -> None:
    pins = _pins(lock)
    assert _names(declared) <= set(pins), _names(declared) - set(pins)
    for name, hashes in pins.items():
        assert hashes, f"{lock}: {name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_build_backend_is_in_the_lock_make_installs() -> None:
    """`make` builds the project without build isolation: maturin must come from the dev
    lock, pinned as the build lock pins it."""
    dev, build = _pins("requirements-dev.lock"), _pins("requirements-build.lock")
    assert set(build) <= set(dev)
    text = (ROOT / "requirements-dev.lock").read_text()
    for line in (ROOT / "requirements-build.lock").read_text().splitlines():
        if _PIN.match(line):
            assert line in text.splitlines(), line
