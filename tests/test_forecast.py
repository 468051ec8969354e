import numpy as np
import pandas as pd
import pytest

from phaseflip.change_points import change_point, penalised_change_point
from phaseflip.config import ForecastConfig
from phaseflip.forecast import (
    analyse_study,
    calibration,
    forecast_quality,
    forecast_run,
    sharpness,
)
from phaseflip.forecast_bench import simulate_study
from phaseflip.forecast_bench_model import SimModel
from phaseflip.forecast_methods import METHODS, Context, RunData, fit_link, lr_scaling_fit
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


def log_table(grad: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"step": STEPS[1:], "grad_norm": grad, "loss": 1.0, "lr": 1e-3})


def test_never_flipping_runs_are_reported_as_such() -> None:
    flat = np.full(len(STEPS), 0.05)
    runs = [("r", metrics_table(flat, flat), scenario_counts(flat), log_table(np.linspace(1, 2, 20)),
             {"control": True})]
    (trow,), frows = analyse_study(runs, CFG, max_steps=20)
    assert trow["flipped"] is False and trow["t50"] is None and trow["t50_text"] == "t50 > 20"
    assert all(f["actual"] is None and f["relative_error"] is None for f in frows)
    assert not any(f["false_alarm"] for f in frows if f["method"] in ("pooled_link", "change_point"))


def test_sharpness_separates_a_step_from_a_line() -> None:
    steps = STEPS.astype(float)
    assert sharpness(steps, steps / 20) == pytest.approx(1.0)
    assert sharpness(steps, (STEPS >= 10).astype(float)) == pytest.approx(20.0)
    assert sharpness(steps, np.full(len(steps), 0.3)) is None


def test_penalised_change_point_needs_a_real_change() -> None:
    rng = np.random.default_rng(2)
    assert penalised_change_point(STEPS, 0.3 + rng.normal(0, 0.01, len(STEPS))) is None
    assert penalised_change_point(STEPS, np.where(STEPS >= 9, 0.8, 0.3) + rng.normal(0, 0.01, len(STEPS))) == 9


# ---- the forecast methods -------------------------------------------------------------------------------

NOISELESS = SimModel(metric="margin", bounded=False, n_scenarios=8, n_near=[400], n_far=[400], link_intercept=-3,
                     link_slope=3, sd_propensity=0, sd_offset=0, sd_speed=0, sd_noise=0, sd_step=0, exponent=1.0,
                     log_speed_ref=np.log(1 / 12), sd_log_speed=0, lr_range=(1.2e-3, 3e-3), sd_grad=0,
                     steps=list(range(0, 17)))
FCFG = ForecastConfig(cutoffs=[0.5], continuous_metric="margin", forecast_bootstrap=40)


def noiseless_study(n_runs: int = 6, seed: int = 0) -> list:
    return simulate_study(NOISELESS, n_runs, 0.0, 0.5, np.random.default_rng(seed))


def context(others: list[RunData], cfg: ForecastConfig = FCFG) -> Context:
    return Context(others, cfg.flip_threshold, cfg.forecast_interval, cfg.forecast_bootstrap, 16,
                   cfg.continuous_metric, 48.0)


@pytest.mark.parametrize("method", ["pooled_link", "per_scenario", "lr_scaling", "linear"])
def test_each_method_recovers_a_known_crossing_on_noiseless_runs(method: str) -> None:
    study = noiseless_study()
    assert all(r.truth is not None for r in study)
    for i, r in enumerate(study):
        others = [o.run for o in study[:i] + study[i + 1:]]
        cutoff = 0.5 * r.truth
        fc = METHODS[method](r.run.prefix(cutoff), cutoff, context(others))
        assert fc.predicted == pytest.approx(r.truth, rel=0.1), (method, r.truth, fc)
        if fc.lo is not None:
            assert fc.lo <= fc.predicted <= fc.hi


def hand_run(x: np.ndarray, grad: np.ndarray) -> RunData:
    steps = np.arange(len(x), dtype=float)
    curve = pd.DataFrame({"step": steps, "x": x, "k": 0.0, "n": 10.0})
    log = pd.DataFrame({"step": steps[1:], "grad_norm": grad[1:]})
    return RunData("r", 1e-3, False, pd.DataFrame(columns=["step", "scenario_id", "x", "k", "n"]), curve, log)


def test_baselines_recover_the_crossing_they_assume() -> None:
    """grad_norm_peak: the flip is at the (past) gradient-norm peak; change_point: at the metric's jump."""
    steps = np.arange(21, dtype=float)
    run = hand_run(np.where(steps >= 9, 0.8, 0.3), np.exp(-((steps - 9) ** 2) / 4))
    ctx = context([])
    assert METHODS["grad_norm_peak"](run.prefix(14), 14, ctx).predicted == 14  # the peak (9) is before the cutoff
    assert METHODS["grad_norm_peak"](run.prefix(8), 8, ctx).predicted is None  # still rising
    assert METHODS["change_point"](run.prefix(14), 9, ctx).predicted == 9


def test_a_flat_run_gives_no_forecast() -> None:
    study = noiseless_study()
    flat = simulate_study(NOISELESS.__class__(**{**NOISELESS.__dict__, "lr_range": (1e-9, 1.1e-9)}), 1, 0.0, 0.5,
                          np.random.default_rng(5))[0]
    assert flat.truth is None
    others = [o.run for o in study]
    for method in ["pooled_link", "per_scenario", "linear", "change_point", "grad_norm_peak"]:
        fc = METHODS[method](flat.run.prefix(8), 8, context(others))
        assert fc.predicted is None and fc.reason, method


def test_the_link_is_fitted_on_the_other_runs_only() -> None:
    """Leave-one-run-out: the held-out run's own counts never reach its forecast; the others' do."""
    study = noiseless_study()
    run, others = study[0], [o.run for o in study[1:]]
    rows = forecast_run(run.run, run.truth, others, FCFG, 16, methods=["pooled_link", "per_scenario"])
    leaked = RunData(run.run.run_id, run.run.lr, False, run.run.scenarios.assign(k=0.0),
                     run.run.curve.assign(k=0.0), run.run.train_log)  # its own behavior: never
    same = forecast_run(leaked, run.truth, others, FCFG, 16, methods=["pooled_link", "per_scenario"])
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in same]
    # a link that saw the held-out run would move: fitting it with the run's zeroed counts included does
    link_others = fit_link(*(pd.concat([o.curve for o in others])[c].to_numpy(float) for c in "xkn"))
    link_leaked = fit_link(*(pd.concat([o.curve for o in [*others, leaked]])[c].to_numpy(float) for c in "xkn"))
    assert link_others is not None and link_leaked is not None
    assert abs(link_leaked.level(0.5) - link_others.level(0.5)) > 0.05
    shifted = [RunData(o.run_id, o.lr, False, o.scenarios.assign(x=o.scenarios.x + 0.3),
                       o.curve.assign(x=o.curve.x + 0.3), o.train_log) for o in others]
    moved = forecast_run(run.run, run.truth, shifted, FCFG, 16, methods=["pooled_link"])
    assert moved[0]["predicted"] > rows[0]["predicted"]  # the others' flip level rose by 0.3


def test_lr_scaling_recovers_gamma() -> None:
    runs = [RunData(f"r{i}", lr, False, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), t50=20 * (1e-3 / lr) ** 0.8
                    * np.exp(e)) for i, (lr, e) in enumerate([(1e-3, 0.02), (2e-3, -0.03), (4e-3, 0.01), (8e-3, 0.0)])]
    fit = lr_scaling_fit(runs)
    assert fit is not None and fit.gamma_lo < 0.8 < fit.gamma_hi and abs(fit.gamma - 0.8) < 0.05
    assert lr_scaling_fit(runs[:2]) is None  # too few runs: no fit, not a guess


def test_quality_and_calibration_tables() -> None:
    study = noiseless_study()
    rows = []
    for i, r in enumerate(study):
        rows += forecast_run(r.run, r.truth, [o.run for o in study[:i] + study[i + 1:]], FCFG, 16)
    rows += forecast_run(hand_run(np.full(17, 0.1), np.linspace(1, 2, 17)), None, [o.run for o in study], FCFG, 16)
    fc = pd.DataFrame(rows)
    q = forecast_quality(fc).set_index("method")
    assert q.loc["pooled_link", "within_25"] == 1.0 and q.loc["pooled_link", "runs_crossing"] == 6
    assert q.loc["pooled_link", "primary"] and q.loc["pooled_link", "false_alarms"] == 0
    assert q.loc["pooled_link", "within_25_lo"] < 1.0  # a share of 6 carries its interval
    cal = calibration(fc)
    assert set(cal.method) >= {"pooled_link", "per_scenario", "lr_scaling"} and cal.actual.between(0, 1).all()


def test_calibration_of_no_forecasts_is_an_empty_table_with_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.figures import calibration_figure
    from phaseflip.forecast import calibration

    table = calibration(pd.DataFrame({"method": ["pooled_link"], "pit": [float("nan")]}))
    assert table.empty and {"method", "nominal", "actual"} <= set(table.columns)
    calibration_figure(table, tmp_path / "calibration.png")  # the smoke study's case: it must still draw
    assert (tmp_path / "calibration.png").exists()
