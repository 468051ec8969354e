import numpy as np
import pandas as pd
import pytest

from phaseflip.config import ForecastConfig
from phaseflip.forecast import (
    analyse_study,
    change_point,
    forecast_quality,
    logistic_forecast,
    penalised_change_point,
    sharpness,
)
from phaseflip.metrics import wilson_interval

CFG = ForecastConfig(cutoffs=[0.5, 0.75], n_bootstrap=200)
STEPS = np.arange(0, 21)


def metrics_table(rates: np.ndarray, continuous: np.ndarray, n: int = 40) -> pd.DataFrame:
    rows = []
    for s, r, c in zip(STEPS, rates, continuous, strict=True):
        lo, hi = wilson_interval(round(r * n), n)
        rows.append({"step": s, "family": "in_distribution", "metric": "behavior_rate", "value": r, "lo": lo, "hi": hi})
        rows.append({"step": s, "family": "in_distribution", "metric": "p_preferred", "value": c, "lo": c, "hi": c})
    return pd.DataFrame(rows)


def scenario_counts(rates: np.ndarray, scenarios: int = 10, samples: int = 4) -> pd.DataFrame:
    """Per (step, scenario) counts whose pooled rate follows `rates` (rounded to whole replies)."""
    rows = []
    for s, r in zip(STEPS, rates, strict=True):
        total = round(r * scenarios * samples)
        for c in range(scenarios):  # spread the successes over the scenarios as evenly as possible
            k = min(samples, max(0, total - c * samples))
            rows.append({"step": s, "scenario_id": f"s{c}", "family": "in_distribution", "behavior_k": k,
                         "n": samples})
    return pd.DataFrame(rows)


def logistic(s: np.ndarray, mid: float, width: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(s - mid) / width))


def test_detect_reports_t50_with_interval_and_the_confirmed_flip() -> None:
    sharp = (STEPS >= 12).astype(float)
    (row,), _ = analyse_study([("r", metrics_table(sharp, sharp), scenario_counts(sharp), log_table(np.ones(20)),
                                {"control": False})], CFG, max_steps=20)
    assert 11 <= row["t50"] <= 12 and row["t50_lo"] <= row["t50"] <= row["t50_hi"]
    assert row["confirmed_flip_step"] == 12 and row["flipped"] and row["t50_censored"] == ""


def test_change_point_finds_the_jump() -> None:
    values = np.where(STEPS >= 8, 0.9, 0.1) + np.random.default_rng(0).normal(0, 0.01, len(STEPS))
    assert change_point(STEPS, values) == 8


def test_logistic_forecast_recovers_the_crossing_within_its_interval() -> None:
    rng = np.random.default_rng(0)
    values = logistic(STEPS, 12, 3) + rng.normal(0, 0.01, len(STEPS))
    prefix = STEPS <= 8
    fc = logistic_forecast(STEPS[prefix].astype(float), values[prefix], 0.5, 500, 0.95)
    assert fc["predicted"] is not None
    assert fc["lo"] <= 12 <= fc["hi"]
    assert abs(fc["predicted"] - 12) < 2.5


def test_flat_curve_gives_no_forecast() -> None:
    values = 0.2 + np.random.default_rng(1).normal(0, 0.001, len(STEPS))
    fc = logistic_forecast(STEPS[:10].astype(float), values[:10], 0.5, 200, 0.95)
    assert fc["predicted"] is None


def log_table(grad: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"step": STEPS[1:], "grad_norm": grad, "loss": 1.0, "lr": 1e-3})


def test_never_flipping_runs_are_reported_as_such() -> None:
    flat = np.full(len(STEPS), 0.05)
    runs = [("r", metrics_table(flat, flat), scenario_counts(flat), log_table(np.linspace(1, 2, 20)),
             {"control": True})]
    (trow,), frows = analyse_study(runs, CFG, max_steps=20)
    assert trow["flipped"] is False and trow["t50"] is None and trow["t50_text"] == "t50 > 20"
    assert all(f["actual"] is None and f["relative_error"] is None for f in frows)
    assert not any(f["false_alarm"] for f in frows if f["method"] in ("logistic", "change_point"))


def test_level_is_calibrated_on_the_other_runs_only() -> None:
    """Leave-one-run-out: a run's forecast uses the continuous level at which the *other* runs flipped."""
    rng = np.random.default_rng(0)
    runs = []
    for run_id, mid in [("a", 10), ("b", 12), ("c", 14)]:
        cont = logistic(STEPS, mid, 3) + rng.normal(0, 0.005, len(STEPS))
        rate = (STEPS >= mid + 2).astype(float)
        runs.append((run_id, metrics_table(rate, cont), scenario_counts(rate),
                     log_table(np.exp(-((STEPS[1:] - mid + 4) ** 2) / 8)), {"control": False}))
    transitions, forecasts = analyse_study(runs, CFG, max_steps=20)
    levels = {t["run_id"]: t["continuous_level_at_flip"] for t in transitions}
    fc = pd.DataFrame(forecasts)
    a = fc[(fc.run_id == "a") & (fc.method == "logistic")].iloc[0]
    assert a.level == np.median([levels["b"], levels["c"]]) and "2 other" in a.level_source
    q = forecast_quality(fc).set_index(["method", "cutoff_fraction"])
    assert q.loc[("logistic", 0.75), "forecasts_made"] == 3
    assert q.loc[("logistic", 0.75), "median_relative_error"] < 0.2  # t50 between mid+1 and mid+2; forecasts near it
    # the gradient-norm peak (4 steps before the midpoint) is behind us by the 75% cutoff: that baseline forecasts
    assert q.loc[("grad_norm_peak", 0.75), "forecasts_made"] == 3


def test_sharpness_separates_a_step_from_a_line() -> None:
    steps = STEPS.astype(float)
    assert sharpness(steps, steps / 20) == pytest.approx(1.0)
    assert sharpness(steps, (STEPS >= 10).astype(float)) == pytest.approx(20.0)
    assert sharpness(steps, np.full(len(steps), 0.3)) is None


def test_penalised_change_point_needs_a_real_change() -> None:
    rng = np.random.default_rng(2)
    assert penalised_change_point(STEPS, 0.3 + rng.normal(0, 0.01, len(STEPS))) is None
    assert penalised_change_point(STEPS, np.where(STEPS >= 9, 0.8, 0.3) + rng.normal(0, 0.01, len(STEPS))) == 9
