"""A run seen from a forecast origin: the leakage guard, whether it has crossed by then, and the
conditioning of a forecast on "not crossed yet" (observed at the origin).

    from phaseflip.forecast.view import check_no_leak, condition, crossed_by, other_configurations
"""

from __future__ import annotations

import numpy as np

from phaseflip.config import ForecastConfig
from phaseflip.forecast.methods import Context, RunData
from phaseflip.stats.t50 import fit_t50


class LeakageError(AssertionError):
    """A forecaster was handed something a researcher at the origin could not have."""


def check_no_leak(view: RunData, others: list[RunData], origin: float) -> None:
    """The structural guard every forecast passes through: the run is a view cut at `origin` (no step after
    it in any of its tables, no t50, no level at its flip) and no other run is the run itself or a
    replicate of its configuration."""
    if view.origin is None or view.origin > origin:
        raise LeakageError(f"{view.run_id}: not a view cut at origin {origin} (origin={view.origin})")
    for name in ("curve", "scenarios", "train_log"):
        table = getattr(view, name)
        if len(table) and float(table.step.max()) > origin:
            raise LeakageError(f"{view.run_id}: {name} has step {table.step.max()} after origin {origin}")
    if view.t50 is not None or view.level_at_flip is not None:
        raise LeakageError(f"{view.run_id}: the view carries the run's own outcome (t50={view.t50})")
    for o in others:
        if o.run_id == view.run_id or o.configuration == view.configuration:
            raise LeakageError(f"{view.run_id}: {o.run_id} (configuration {o.configuration}) is not another "
                               "configuration")


def other_configurations(run: RunData, runs: list[RunData]) -> list[RunData]:
    """Leave-one-configuration-out: the finished runs of every other configuration (the run's replicates,
    other seeds of its lr / n_real / dreams / control, are excluded)."""
    return [r for r in runs if r.configuration != run.configuration]


def crossed_by(view: RunData, threshold: float) -> bool:
    """Whether the run has crossed by its view's origin, from the view's counts only: the transition fit
    (`fit_t50`, the measurement's own estimator) on the checkpoints so far finds a crossing, or the
    only checkpoint is already above the threshold."""
    c = view.curve[view.curve.n > 0]
    if not len(c):
        return False
    if len(c) < 2:
        return bool(c.k.iloc[-1] / c.n.iloc[-1] >= threshold)
    counts = (view.scenarios[view.scenarios.n > 0][["step", "scenario_id", "k", "n"]] if len(view.scenarios)
              else c.assign(scenario_id="all")[["step", "scenario_id", "k", "n"]])
    fit = fit_t50(counts, threshold, n_bootstrap=2, confidence=0.95, seed=0)
    return fit.t50 is not None or fit.censored == "left"


MIN_KEPT = 0.05  # conditioning on "not crossed yet" keeps the draws at or after the origin if at least this share


def condition(draws: np.ndarray, origin: float) -> np.ndarray:
    """The draws given "not crossed before the origin" (observed): those at or after it (at it: "now"),
    resampled to the same number; when (almost) none is, the method says "now": every draw at the origin."""
    keep = draws[draws >= origin]
    if len(keep) >= max(1.0, MIN_KEPT * len(draws)):
        return np.resize(keep, len(draws))
    return np.full(len(draws), float(origin))


def context_for(others: list[RunData], cfg: ForecastConfig, max_steps: int, seed: int) -> Context:
    """What a forecast from an origin knows besides the run: the given other runs, under the config."""
    return Context(others, cfg.flip_threshold, cfg.forecast_interval, cfg.forecast_bootstrap, max_steps,
                   cfg.continuous_metric, cfg.horizon_factor * max_steps, seed)
