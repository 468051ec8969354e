"""Copy the project (or some of it) into a temporary folder, for tests that run Snakemake or DVC there."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Caches and DVC's tmp/cache are never needed by a copy, and would make it slow and stateful.
IGNORE = shutil.ignore_patterns("tmp", "cache", "__pycache__", ".snakemake")


def copy_project(dest: Path, names: list[str], source: Path = ROOT) -> Path:
    """Copy `names` (files or folders, missing ones skipped) from `source` into `dest`."""
    for name in names:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest
