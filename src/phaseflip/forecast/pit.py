"""The PIT histograms of t50 forecasts (the forecast bench's calibration figure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phaseflip.plotting import plt, savefig


def pit_figure(forecasts: pd.DataFrame, methods: list[str], path: Path, bins: int = 10) -> None:
    """PIT histograms (randomised PIT of the censored target): one panel per generator (or one for a study)
    x method; a calibrated forecaster's is flat at 1 (dashed)."""
    made = forecasts[forecasts.forecast_made.astype(bool) & forecasts.pit.notna()] if len(forecasts) else forecasts
    groups = list(dict.fromkeys(made.generator)) if "generator" in made and len(made) else ["study"]
    fig, axes = plt.subplots(len(groups), len(methods), figsize=(3 * len(methods), 2.2 * len(groups)),
                             squeeze=False, sharex=True, constrained_layout=True)
    for r, group in enumerate(groups):
        sel = made[made.generator == group] if "generator" in made else made
        for c, method in enumerate(methods):
            ax = axes[r][c]
            pit = sel[sel.method == method].pit.to_numpy(float) if len(sel) else np.array([])
            if len(pit):
                ax.hist(pit, bins=bins, range=(0, 1), density=True, color="tab:blue", alpha=0.7)
            ax.axhline(1, color="grey", ls="--", lw=0.8)
            ax.set_title(f"{group}: {method} (n={len(pit)})", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("PIT of the t50 forecasts (censored at max_steps; origins pooled); flat = calibrated", fontsize=9)
    savefig(fig, path)
