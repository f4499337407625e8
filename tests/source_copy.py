"""A copy of what building podnet needs (pyproject, README, src): pip builds in the tree it is
given, so the packaging tests build from a copy and leave the checkout as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_source(dest: Path) -> Path:
    """Copy pyproject.toml, README.md and src/ (no caches, no egg-info) to ``dest``; returns it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", dest / "src", ignore=ignore, symlinks=False)
    return dest
