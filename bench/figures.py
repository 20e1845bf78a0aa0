"""Where a bench's figures go: JSON under bench/results/ (or where --json says)."""

from __future__ import annotations

import json
from pathlib import Path


def write_figures(path: Path | None, figures: object) -> None:
    """A bench's figures as JSON at `path` (nothing when no path was asked for)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")
