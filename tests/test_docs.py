"""The repository stands alone: every document it names is in it.

Comments, docstrings and pages once pointed at design documents that never were in the
repository; the facts the code relies on now live under docs/ (the farm's rules in
docs/protocol.md). Any `*.md` a tracked text file names must exist: at the repository's
root, under docs/, or beside the file that names it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not the project's own text: version control, environments, build output, caches.
SKIP = {".git", ".venv", "venv", "target", "build", "dist", "logs", "__pycache__"}
SKIP |= {".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}
SUFFIXES = {".py", ".pyi", ".md", ".rs", ".toml", ".yaml", ".yml", ".sql", ".proto", ".sh"}
NAMES = {"Makefile", "Containerfile", "run"}
# A document name, outside a URL (an address on the web is not the repository's to hold).
MD_NAME = re.compile(r"(?<![\w./:-])((?:[\w-]+/)*[\w-]+\.md)\b")
URL = re.compile(r"https?://\S+")


def _texts() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix in SUFFIXES or name in NAMES:
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
