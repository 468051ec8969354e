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


def bounded_run(t50: float, floor: float, ceiling: float, rng: np.random.Generator, scenarios: int = 30,
                samples: int = 6, slope: float = 0.9) -> pd.DataFrame:
    """Counts of a run whose rate is floor + (ceiling - floor) * logistic, crossing 0.5 at `t50`
    (outside the logit-linear forms: a base rate and scenarios that never flip)."""
    level = (0.5 - floor) / (ceiling - floor)
    mid = t50 - math.log(level / (1 - level)) / slope
    rows = [(s, c, int(rng.binomial(samples, floor + (ceiling - floor) / (1 + math.exp(-slope * (s - mid))))), samples)
            for s in STEPS for c in range(scenarios)]
    return pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"])


def test_a_floor_and_a_ceiling_are_fitted_where_the_logit_linear_curve_is_biased() -> None:
    rng = np.random.default_rng(3)
    truths = rng.uniform(5, 11, 12)
    runs = [bounded_run(t, 0.25, 0.8, rng) for t in truths]
    bounded = [fit_t50(r, 0.5, n_bootstrap=40, seed=i) for i, r in enumerate(runs)]
    logit = [fit_t50(r, 0.5, n_bootstrap=40, seed=i, floor_ceiling=False) for i, r in enumerate(runs)]
    assert np.mean([f.shape == "floor_ceiling" for f in bounded]) >= 0.75
    assert np.median([f.floor for f in bounded]) == pytest.approx(0.25, abs=0.08)
    assert np.median([f.ceiling for f in bounded]) == pytest.approx(0.8, abs=0.08)
    err = {name: np.mean([abs(f.t50 - t) for f, t in zip(fits, truths, strict=True)])
           for name, fits in (("bounded", bounded), ("logit", logit))}
    assert err["bounded"] < 0.7 * err["logit"], err
    assert np.mean([f.lo <= t <= f.hi for f, t in zip(bounded, truths, strict=True)]) >= 0.8


def test_a_run_that_levels_off_below_the_threshold_does_not_reach_it() -> None:
    rng = np.random.default_rng(4)
    rate = {s: 0.42 / (1 + math.exp(-1.5 * (s - 4))) for s in STEPS}  # up to 0.42 by step ~8, then flat
    rows = [(s, c, int(rng.binomial(6, rate[s])), 6) for s in STEPS for c in range(30)]
    fit = fit_t50(pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"]), 0.5, n_bootstrap=20)
    # no later crossing to extrapolate to: "levels off", not "t50 > 16"
    assert fit.censored == "levels_off" and fit.t50 is None and fit.ceiling < 0.5
    assert fit.describe().startswith("levels off at 0.4")
    assert fit.as_row()["t50_shape"] == "floor_ceiling"
