import math

import numpy as np
import pandas as pd
import pytest

from phaseflip.stats.t50 import confirmed_flip, fit_t50

STEPS = [0, 2, 4, 6, 8, 10, 12, 16]


def simulated_run(t50: float, slope: float, rng: np.random.Generator, scenarios: int = 20, samples: int = 4,
                  spread: float = 1.0) -> pd.DataFrame:
    """Counts of a run whose population rate crosses 0.5 at `t50` (scenario effects symmetric around it)."""
    effects = rng.normal(0, spread, scenarios)
    rows = [(s, c, int(rng.binomial(samples, 1 / (1 + math.exp(-(slope * (s - t50) + effects[c]))))), samples)
            for s in STEPS for c in range(scenarios)]
    return pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"])


def test_t50_recovered_within_its_interval_on_synthetic_runs() -> None:
    rng = np.random.default_rng(0)
    truths = rng.uniform(4, 13, 20)
    fits = [fit_t50(simulated_run(t, 0.8, rng), 0.5, n_bootstrap=100, seed=i) for i, t in enumerate(truths)]
    assert all(f.censored == "" for f in fits)
    covered = [f.lo <= t <= f.hi for f, t in zip(fits, truths, strict=True)]
    assert np.mean(covered) >= 0.85  # nominal 95%; 20 runs
    assert np.median([abs(f.t50 - t) for f, t in zip(fits, truths, strict=True)]) < 1.0


def test_noiseless_sharp_flip_lands_between_the_checkpoints_around_it() -> None:
    rows = [(s, c, 0 if s < 8 else 4, 4) for s in STEPS for c in range(10)]  # all 0 up to 6, all 1 from 8
    fit = fit_t50(pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"]), 0.5, n_bootstrap=20)
    assert fit.censored == "" and 6 <= fit.t50 <= 8


def test_run_that_never_crosses_is_right_censored() -> None:
    rng = np.random.default_rng(1)
    fit = fit_t50(simulated_run(30, 0.5, rng), 0.5, n_bootstrap=20)
    assert fit.censored == "right" and fit.t50 is None
    assert fit.describe() == "t50 > 16"
    flat = pd.DataFrame([(s, c, 0, 4) for s in STEPS for c in range(10)], columns=["step", "scenario_id", "k", "n"])
    assert fit_t50(flat, 0.5, n_bootstrap=20).censored == "right"


def test_already_above_at_the_start_is_left_censored() -> None:
    rows = [(s, c, 4, 4) for s in STEPS for c in range(10)]
    assert fit_t50(pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"]), 0.5, 20).censored == "left"


def test_fit_needs_two_steps() -> None:
    with pytest.raises(ValueError, match=">= 2 steps"):
        fit_t50(pd.DataFrame({"step": [4], "scenario_id": ["a"], "k": [1], "n": [2]}), 0.5)


def test_confirmed_flip_is_the_first_interval_above_the_threshold() -> None:
    rates = pd.DataFrame({"step": [0, 4, 8, 12], "lo": [0.0, 0.45, 0.55, 0.8]})
    assert confirmed_flip(rates, 0.5) == 8
    assert confirmed_flip(rates.assign(lo=0.1), 0.5) is None


def test_the_observed_crossing_is_bracketed_by_checkpoints() -> None:
    rows = [(s, c, int(s >= 8) * 3 + int(s == 6), 4) for s in STEPS for c in range(10)]  # 0, ..., 0.25 at 6, 0.75
    fit = fit_t50(pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"]), 0.5, n_bootstrap=20)
    assert fit.bracket == (6, 8) and fit.as_row()["bracket_below"] == 6 and fit.as_row()["bracket_above"] == 8
    flat = pd.DataFrame([(s, c, 0, 4) for s in STEPS for c in range(10)], columns=["step", "scenario_id", "k", "n"])
    assert fit_t50(flat, 0.5, n_bootstrap=20).bracket is None
