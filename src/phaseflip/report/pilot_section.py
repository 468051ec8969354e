"""The report's pilot section: what the pilot chose, from which probes, its prediction tested by the real runs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from phaseflip.interventions.train import lr_text


def pilot_lines(grid: dict[str, Any] | None, transitions: pd.DataFrame, stage_costs: pd.DataFrame,
                max_steps: int, window: tuple[float, float] = (0.25, 0.75), **_: Any) -> list[str]:
    """Markdown lines: the chosen lrs and why, the probes, predicted vs measured t50 per run, the pilot's cost."""
    if grid is None:
        return []
    L = ["", "## The grid: chosen by the pilot", "",
         f"`train.lrs: auto`: {grid['chosen_by']} — {grid['note']}. Grid lrs: "
         + ", ".join(f"{lr:g}" for lr in grid["lrs"])
         + f"; t50 ~ lr^-beta with beta {grid['beta']:.2f} ({grid['beta_source']})."]
    if grid.get("checkpoint_steps"):
        L.append(f"Evaluated checkpoints (`checkpoint_steps: auto`): {grid['checkpoint_steps']}.")
    L += ["", "| probe lr | steps run | rate by step | crossing step |", "|---|---|---|---|"]
    for p in grid["probes"]:
        rates = " ".join(f"{k / n:.2f}" if n else "-" for k, n in zip(p["k"], p["n"], strict=True))
        t = p.get("t50")
        L.append(f"| {p['lr']:g} | {max(p['steps'])} | {rates} | {'none' if t is None else f'{t:.1f}'} |")
    predicted = grid.get("predicted_t50") or {}
    real = transitions[~transitions.control.astype(bool)] if len(transitions) else transitions
    if predicted and len(real):
        low, high = (w * max_steps for w in window)
        L += ["", f"Predicted vs measured t50 (the prediction is for all real corrections without dreams; target "
                  f"window [{low:g}, {high:g}] steps):", "",
              "| run | predicted t50 | measured t50 [95%] | measured inside the window |", "|---|---|---|---|"]
        inside = 0
        for t in real.itertuples():
            pred = predicted.get(lr_text(float(t.lr)))
            measured = t.t50 if isinstance(t.t50, float) and math.isfinite(t.t50) else None
            ok = measured is not None and low <= measured <= high
            inside += ok
            pred_text = "-" if pred is None else f"{pred:.1f}"
            L.append(f"| {t.run_id} | {pred_text} | {t.t50_text} | {'yes' if ok else 'no'} |")
        L.append(f"\n{inside} of {len(real)} real runs crossed inside the window.")
    if len(stage_costs):
        pilot_s = float(stage_costs[stage_costs.job == "pilot"].s.sum())
        total = float(stage_costs.s.sum())
        L.append(f"\nPilot cost: {pilot_s:.0f} s of the study's {total:.0f} job-seconds "
                 f"({100 * pilot_s / total:.0f}%).")
    return L
