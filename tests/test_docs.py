"""The repository stands alone: every document it names is in it.

Comments, docstrings and pages once pointed at design documents that never were in the
repository; the facts the code relies on now live under docs/ (the farm's rules in
docs/protocol.md). Any `*.md` a tracked text file names must exist: at the repository's
root, under docs/, or beside the file that names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the project's own text lives (not .venv, build output or caches).
SOURCES = ["docs", "kalepool", "wallet_service", "pool_service", "pooler_agent", "tests"]
SOURCES += ["miner_ext/src", "miner_ext/examples", "deploy", "proto", "bench", ".ci"]
FILES = ["README.md", "Makefile", "pyproject.toml", "miner_ext.pyi", "miner_ext/Cargo.toml"]
SUFFIXES = {".py", ".pyi", ".md", ".rs", ".toml", ".yaml", ".yml", ".sql", ".proto", ""}
# A document name, outside a URL (an address on the web is not the repository's to hold).
MD_NAME = re.compile(r"(?<![\w./:-])((?:[\w-]+/)*[\w-]+\.md)\b")
URL = re.compile(r"https?://\S+")


def _texts() -> Iterator[Path]:
    for name in FILES:
        yield ROOT / name
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                yield path


def test_every_document_named_is_in_the_repository() -> None:
    missing = []
    for path in _texts():
        text = URL.sub("", path.read_text(errors="replace"))
        for name in set(MD_NAME.findall(text)):
            candidates = (ROOT / name, ROOT / "docs" / name, path.parent / name)
            if not any(c.is_file() for c in candidates):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


def test_the_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "pages the README's table does not link"
