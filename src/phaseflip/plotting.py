"""Figures written like every other output: matplotlib without a display, PNG via temp file + rename.

Figure modules import `plt` from here, so the non-interactive backend is chosen before pyplot loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from phaseflip.io import atomic_path  # noqa: E402

__all__ = ["plt", "savefig"]


def savefig(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
