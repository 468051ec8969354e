import numpy as np
import pandas as pd
import pytest

from phaseflip.config import ForecastConfig
from phaseflip.forecast.analysis import analyse_study, forecast_at, forecast_run, sharpness
from phaseflip.forecast.bench import run_bench, simulate_study
from phaseflip.forecast.bench_model import SimModel
from phaseflip.forecast.methods import METHODS, Context, RunData, configuration_of, fit_link, lr_scaling_fit
from phaseflip.forecast.scores import (
    crps_censored,
    first_winning_origin,
    lead_times,
    paired_skill,
    score_forecasts,
    score_table,
)
from phaseflip.forecast.view import LeakageError, condition, other_configurations
from phaseflip.stats.change_points import best_change_point, penalised_change_point
from phaseflip.stats.intervals import wilson_interval

CFG = ForecastConfig(n_bootstrap=200, forecast_bootstrap=40)
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
    assert best_change_point(STEPS, values) == 8


def log_table(grad: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"step": STEPS[1:], "grad_norm": grad, "loss": 1.0, "lr": 1e-3})


def test_never_flipping_runs_are_reported_as_such() -> None:
    flat = np.full(len(STEPS), 0.05)
    runs = [("r", metrics_table(flat, flat), scenario_counts(flat), log_table(np.linspace(1, 2, 20)),
             {"control": True})]
    (trow,), frows = analyse_study(runs, CFG, max_steps=20)
    assert trow["flipped"] is False and trow["t50"] is None and trow["t50_text"] == "t50 > 20"
    assert frows.t50.isna().all() and not frows.crosses.any() and not frows.crossed_by_origin.any()
    assert set(frows.origin_step) == set(STEPS[:-1].astype(float))  # every checkpoint before max_steps
    made = frows[frows.forecast_made]
    assert (made.p_cross_by_max_steps < 0.5).all()


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
FCFG = ForecastConfig(continuous_metric="margin", forecast_bootstrap=40)


def noiseless_study(n_runs: int = 6, seed: int = 0) -> list:
    return simulate_study(NOISELESS, n_runs, 0.0, 0.5, np.random.default_rng(seed))


def context(others: list[RunData], cfg: ForecastConfig = FCFG) -> Context:
    return Context(others, cfg.flip_threshold, cfg.forecast_interval, cfg.forecast_bootstrap, 16,
                   cfg.continuous_metric, 48.0)


@pytest.mark.parametrize("method", ["pooled_link", "per_scenario", "lr_scaling", "linear"])
def test_each_method_recovers_a_known_crossing_on_noiseless_runs(method: str) -> None:
    study = noiseless_study()
    assert all(r.truth is not None for r in study)
    made = 0
    for r in study:
        others = [o.run for o in study if o is not r]
        origin = 0.5 * r.truth
        fc = METHODS[method](r.run.prefix(origin), origin, context(others))
        if fc.draws is None:  # lr_scaling: only inside the other runs' learning rates
            assert method == "lr_scaling" and "outside" in fc.reason, fc
            continue
        made += 1
        assert np.median(fc.draws) == pytest.approx(r.truth, rel=0.1), (method, r.truth, fc)
    assert made >= 4


def hand_run(x: np.ndarray, grad: np.ndarray, run_id: str = "r") -> RunData:
    steps = np.arange(len(x), dtype=float)
    curve = pd.DataFrame({"step": steps, "x": x, "k": 0.0, "n": 10.0})
    log = pd.DataFrame({"step": steps[1:], "grad_norm": grad[1:]})
    return RunData(run_id, 1e-3, False, pd.DataFrame(columns=["step", "scenario_id", "x", "k", "n"]), curve, log)


def test_baselines_find_what_they_assume_and_a_past_point_means_now() -> None:
    """grad_norm_peak: the flip is at the (past) gradient-norm peak; change_point: at the metric's jump. Seen
    from a later origin (not crossed yet), a point in the past is conditioned to "now", not kept."""
    steps = np.arange(21, dtype=float)
    run = hand_run(np.where(steps >= 9, 0.8, 0.3), np.exp(-((steps - 9) ** 2) / 4))
    ctx = context([])
    peak = METHODS["grad_norm_peak"](run.prefix(14), 14, ctx).draws
    assert peak is not None and list(peak) == [9.0]
    assert list(condition(peak, 14)) == [14.0]
    assert METHODS["grad_norm_peak"](run.prefix(8), 8, ctx).draws is None  # still rising
    cp = METHODS["change_point"](run.prefix(14), 14, ctx).draws
    assert cp is not None and list(cp) == [9.0]


def test_a_flat_run_gets_no_crossing_within_the_budget() -> None:
    study = noiseless_study()
    flat = simulate_study(NOISELESS.__class__(**{**NOISELESS.__dict__, "lr_range": (1e-9, 1.1e-9)}), 1, 0.0, 0.5,
                          np.random.default_rng(5))[0]
    assert flat.truth is None
    flat.run.run_id = flat.run.configuration = "flat"  # another study's run: not one of `study`'s
    rows = forecast_at(flat.run.prefix(8), [o.run for o in study], FCFG, 16, 0,
                       ["pooled_link", "per_scenario", "linear", "change_point", "grad_norm_peak"])
    for row in rows:
        assert not row["forecast_made"] or row["p_cross_by_max_steps"] < 0.05, row
        assert not row["forecast_made"] or row["q50"] == np.inf  # "beyond max_steps"


def test_the_link_is_fitted_on_the_other_runs_only() -> None:
    """The held-out run's own counts never reach its forecast; the others' do."""
    study = noiseless_study()
    run, others = study[0], [o.run for o in study[1:]]
    methods = ["pooled_link", "per_scenario"]
    rows = forecast_run(run.run, others, FCFG, 16, methods=methods)
    leaked = RunData(run.run.run_id, run.run.lr, False, run.run.scenarios.assign(k=0.0),
                     run.run.curve.assign(k=0.0), run.run.train_log)  # its own behavior: never
    same = forecast_run(leaked, others, FCFG, 16, methods=methods)
    made = [i for i, r in enumerate(rows) if r["forecast_made"]]
    assert made and all(rows[i]["predicted"] == same[i]["predicted"] for i in made)
    link_others = fit_link(*(pd.concat([o.curve for o in others])[c].to_numpy(float) for c in "xkn"))
    link_leaked = fit_link(*(pd.concat([o.curve for o in [*others, leaked]])[c].to_numpy(float) for c in "xkn"))
    assert link_others is not None and link_leaked is not None
    assert abs(link_leaked.level(0.5) - link_others.level(0.5)) > 0.05
    shifted = [RunData(o.run_id, o.lr, False, o.scenarios.assign(x=o.scenarios.x + 0.3),
                       o.curve.assign(x=o.curve.x + 0.3), o.train_log) for o in others]
    origin = float(np.floor(0.5 * run.truth))
    before = forecast_at(run.run.prefix(origin), others, FCFG, 16, 0, ["pooled_link"])[0]
    moved = forecast_at(run.run.prefix(origin), shifted, FCFG, 16, 0, ["pooled_link"])[0]
    assert moved["predicted"] > before["predicted"]  # the others' flip level rose by 0.3


def test_lr_scaling_recovers_gamma_and_does_not_extrapolate() -> None:
    runs = [RunData(f"r{i}", lr, False, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), t50=20 * (1e-3 / lr) ** 0.8
                    * np.exp(e)) for i, (lr, e) in enumerate([(1e-3, 0.02), (2e-3, -0.03), (4e-3, 0.01), (8e-3, 0.0)])]
    fit = lr_scaling_fit(runs)
    assert fit is not None and fit.gamma_lo < 0.8 < fit.gamma_hi and abs(fit.gamma - 0.8) < 0.05
    assert fit.lr_range == (1e-3, 8e-3)
    assert lr_scaling_fit(runs[:2]) is None  # too few runs: no fit, not a guess
    inside = hand_run(np.linspace(0, 1, 5), np.ones(5), "inside")
    inside.lr = 3e-3
    assert METHODS["lr_scaling"](inside.prefix(2), 2, context(runs)).draws is not None
    for lr in (1e-4, 1e-2):  # outside the studied learning rates: no forecast, said so
        outside = hand_run(np.linspace(0, 1, 5), np.ones(5), f"lr{lr}")
        outside.lr = lr
        fc = METHODS["lr_scaling"](outside.prefix(2), 2, context(runs))
        assert fc.draws is None and "outside" in fc.reason


# ---- leakage --------------------------------------------------------------------------------------------

def test_a_view_that_carries_the_truth_or_the_future_fails_the_leakage_check() -> None:
    study = noiseless_study()
    run, others = study[0], [o.run for o in study[1:]]
    view = run.run.prefix(4)
    forecast_at(view, others, FCFG, 16, 0, ["pooled_link"])  # a clean view passes
    planted = run.run.prefix(4)
    planted.t50 = run.truth  # the run's own t50 handed to the forecaster
    with pytest.raises(LeakageError, match="own outcome"):
        forecast_at(planted, others, FCFG, 16, 0, ["pooled_link"])
    level = run.run.prefix(4)
    level.level_at_flip = 0.9
    with pytest.raises(LeakageError):
        forecast_at(level, others, FCFG, 16, 0, ["pooled_link"])
    future = run.run.prefix(16)
    future.origin = 4.0  # claims origin 4 but holds every checkpoint
    with pytest.raises(LeakageError, match="after origin"):
        forecast_at(future, others, FCFG, 16, 0, ["pooled_link"])
    with pytest.raises(LeakageError, match="not a view"):
        forecast_at(run.run, others, FCFG, 16, 0, ["pooled_link"])  # the whole run, not a view
    with pytest.raises(LeakageError, match="not another configuration"):
        forecast_at(view, [*others, run.run], FCFG, 16, 0, ["pooled_link"])  # itself among the others


def test_forecasts_do_not_move_with_the_runs_future_or_its_truth() -> None:
    """Behavioural: forecasts from origin s are the same whatever happens after s and whatever t50 the run
    object carries (the view drops both)."""
    study = noiseless_study()
    run, others = study[1], [o.run for o in study if o is not study[1]]
    r = run.run
    cut = RunData(r.run_id, r.lr, r.control, r.scenarios[r.scenarios.step <= 6], r.curve[r.curve.step <= 6],
                  r.train_log[r.train_log.step <= 6], t50=123.0, level_at_flip=9.0)
    a = [x for x in forecast_run(r, others, FCFG, 16) if x["origin_step"] <= 6]
    b = forecast_run(cut, others, FCFG, 16)
    assert [x["predicted"] for x in a] == [x["predicted"] for x in b]


def test_replicates_of_the_held_out_configuration_are_excluded() -> None:
    study = noiseless_study(4)
    seeds = [RunData(f"lr2e-03_nall_k0_s{i}", o.run.lr, False, o.run.scenarios, o.run.curve, o.run.train_log,
                     t50=o.run.t50, level_at_flip=o.run.level_at_flip) for i, o in enumerate(study[:2])]
    other = RunData("lr5e-03_nall_k0_s0", study[2].run.lr, False, study[2].run.scenarios, study[2].run.curve,
                    study[2].run.train_log, t50=study[2].run.t50, level_at_flip=study[2].run.level_at_flip)
    control = RunData("control-own-replies_lr2e-03_nall_k0_s0", 2e-3, True, study[3].run.scenarios,
                      study[3].run.curve, study[3].run.train_log)
    assert configuration_of(seeds[0].run_id) == configuration_of(seeds[1].run_id) == "lr2e-03_nall_k0"
    assert configuration_of(control.run_id) != configuration_of(seeds[0].run_id)  # the control is its own
    assert other_configurations(seeds[0], [*seeds, other, control]) == [other, control]
    with pytest.raises(LeakageError, match="not another configuration"):  # the guard catches a replicate
        forecast_at(seeds[0].prefix(4), [seeds[1], other], FCFG, 16, 0, ["climatology"])
    # forecast_run drops it: climatology then reads only the other configuration's t50
    rows = forecast_run(seeds[0], [*seeds, other], FCFG, 16, methods=["climatology"])
    made = [x for x in rows if x["forecast_made"] and x["origin_step"] == 0]
    assert made and set(made[0]["_draws"]) == {other.t50}


def test_an_origin_after_the_crossing_is_already_crossed_not_a_forecast() -> None:
    study = noiseless_study()
    run, others = study[0], [o.run for o in study[1:]]
    rows = forecast_run(run.run, others, FCFG, 16)
    late = [x for x in rows if x["origin_step"] >= run.truth + 1.5]
    early = [x for x in rows if x["origin_step"] <= run.truth - 1.5]
    assert late and early
    for x in late:
        assert x["crossed_by_origin"] and not x["forecast_made"] and np.isnan(x["predicted"])
        assert x["reason"] == "already crossed" and np.isnan(x["p_cross_by_max_steps"])
    assert not any(x["crossed_by_origin"] for x in early)
    assert all(x["forecast_made"] for x in early if x["method"] == "climatology")


# ---- scores ---------------------------------------------------------------------------------------------

def test_crps_of_a_point_mass_is_zero_at_the_truth_and_grows_with_distance() -> None:
    h = 16.0
    assert crps_censored(np.array([8.0]), 8.0, h) == pytest.approx(0.0)
    d = [crps_censored(np.array([8.0 + e]), 8.0, h) for e in (0.5, 1, 2, 4)]
    assert d == pytest.approx([0.5, 1, 2, 4]) and d == sorted(d)  # a point mass: its absolute error
    # censored: a run that does not cross by h; "beyond h" (any draw past it, inf included) is exact
    assert crps_censored(np.array([np.inf]), None, h) == pytest.approx(0.0)
    assert crps_censored(np.array([30.0, np.inf]), None, h) == pytest.approx(0.0)
    far = [crps_censored(np.array([h - e]), None, h) for e in (1, 3, 6)]
    assert far == pytest.approx([1, 3, 6])
    # a truth at 10 against a forecast of "beyond": the distance to h, not to an unobservable t50
    assert crps_censored(np.array([np.inf]), 10.0, h) == pytest.approx(6.0)
    # a spread distribution centred on the truth scores above 0 and below its absolute error
    spread = crps_censored(np.array([6.0, 10.0]), 8.0, h)
    assert 0 < spread < 2


def test_score_rows_coverage_of_a_censored_truth_and_the_pit() -> None:
    base = {"run_id": "a", "method": "m", "origin_step": 2.0, "origin_fraction": 0.125, "primary": True,
            "crossed_by_origin": False, "forecast_made": True, "p_cross_by_max_steps": 0.2, "predicted": np.inf,
            "q025": 5.0, "q10": 9.0, "q25": 15.0, "q50": np.inf, "q75": np.inf, "q90": np.inf, "q975": np.inf,
            "_draws": np.r_[np.linspace(5, 15, 20), np.full(80, np.inf)]}
    scored = score_forecasts([base], {"a": None}, 16)
    row = scored.iloc[0]
    assert row.covered_50 and row.covered_80 and row.covered_95 and not row.crosses
    assert 0.2 <= row.pit <= 1.0  # uniform within the mass beyond h
    crossing = score_forecasts([base], {"a": 6.0}, 16).iloc[0]
    assert not crossing.covered_80 and crossing.covered_95 and crossing.crosses
    assert "_draws" not in scored


def test_paired_skill_and_its_interval() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 2, 40)
    runs = np.repeat(np.arange(10), 4)
    sk, lo, hi = paired_skill(ref, ref, runs)
    assert sk == 0 and lo == 0 and hi == 0
    sk, lo, hi = paired_skill(0.5 * ref, ref, runs)
    assert sk == pytest.approx(0.5) and lo == pytest.approx(0.5)
    noisy = ref * rng.uniform(0.5, 1.6, 40)
    sk, lo, hi = paired_skill(noisy, ref, runs)
    assert lo < sk < hi and lo < 0 < hi  # no real difference: the interval covers 0


def test_first_winning_origin_needs_every_later_origin_with_enough_runs() -> None:
    def table(los: list[float], pairs: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"method": "p", "origin_step": [0.0, 2.0, 4.0, 6.0][:len(los)],
                             "skill_linear": los, "skill_climatology": los, "skill_linear_lo": los,
                             "skill_climatology_lo": los, "pairs_linear": pairs, "pairs_climatology": pairs})

    assert first_winning_origin(table([-0.1, 0.1, 0.2, 0.3], [9, 9, 9, 9]), "p") == 2.0
    assert first_winning_origin(table([0.1, -0.1, 0.2, 0.3], [9, 9, 9, 9]), "p") == 4.0
    assert first_winning_origin(table([0.1, 0.2, 0.3, -0.5], [9, 9, 9, 9]), "p") is None
    assert first_winning_origin(table([0.1, 0.2, 0.3, -0.5], [9, 9, 9, 2]), "p") == 0.0  # too few at 6
    assert first_winning_origin(table([0.1, 0.2, 0.3, np.nan], [9, 9, 9, 9]), "p") == 0.0  # no ratio at 6


def test_lead_time_counts_from_the_first_origin_that_stays_right() -> None:
    fc = pd.DataFrame({"run_id": "a", "method": "p", "t50": 10.0, "crosses": True, "forecast_made": True,
                       "origin_step": [0.0, 2.0, 4.0, 6.0, 8.0, 12.0],
                       "within_25": [True, False, True, True, True, None],
                       "covered_80": [True, True, True, True, True, None]})
    lead = lead_times(fc).iloc[0]
    assert lead.lead_within_25 == 6.0 and lead.lead_covered_80 == 10.0


def test_coverage_on_a_small_simulated_batch_is_near_nominal() -> None:
    """The primary's central intervals on runs of its own model class cover about as often as they claim
    (nominal 0.5/0.8/0.95, by the PIT; a batch of ~20 runs x their origins, clustered; measured 0.46/0.77/0.86)."""
    from phaseflip.config import ForecastBenchConfig

    cfg = ForecastConfig(forecast_bootstrap=40, bench=ForecastBenchConfig(control_share=0.0, n_bootstrap=40))
    rows = run_bench(SimModel(), cfg, n_runs=18, seed=1, processes=1, generators=["fitted"],
                     methods=["pooled_link", "linear", "climatology"])
    made = rows[(rows.method == "pooled_link") & rows.forecast_made]
    assert len(made) >= 40
    cov = {k: made[f"pit_coverage_{k}"].mean() for k in (50, 80, 95)}  # the PIT's: nominal for a calibrated one
    assert 0.3 <= cov[50] <= 0.7 and 0.65 <= cov[80] <= 0.9 and cov[95] >= 0.82, cov
    table = score_table(rows)
    assert {"skill_linear", "skill_climatology_lo", "brier", "coverage_80"} <= set(table.columns)


def test_conditioning_on_not_crossed_yet_keeps_later_draws_and_says_now_otherwise() -> None:
    draws = np.array([1.0, 3.0, 5.0, 7.0, np.inf])
    assert sorted(condition(draws, 4.0)) == [5.0, 5.0, 7.0, 7.0, np.inf]  # resampled from those after it
    assert list(condition(np.array([4.0, 1.0]), 4.0)) == [4.0, 4.0]  # a crossing at the origin: now
    assert list(condition(np.array([1.0, 2.0]), 4.0)) == [4.0, 4.0]  # all in the past: now


def test_a_study_with_no_origin_to_forecast_from_keeps_the_output_contract() -> None:
    """Every run crossed before (or lacks) a checkpoint to forecast from: the files keep their columns."""
    from phaseflip.forecast.scores import FORECAST_COLUMNS, SCORE_COLUMNS, score_forecasts, score_table

    forecasts = score_forecasts([], {"lr3e-03_nall_k0_s0": 0.5}, max_steps=4)
    assert list(forecasts.columns) == FORECAST_COLUMNS and forecasts.empty
    quality = score_table(forecasts)
    assert list(quality.columns) == SCORE_COLUMNS and quality.empty
    # the same columns as a study that does forecast (here: a run that never flips)
    flat = np.full(len(STEPS), 0.05)
    runs = [("r", metrics_table(flat, flat), scenario_counts(flat), log_table(np.linspace(1, 2, 20)),
             {"control": True})]
    _, made = analyse_study(runs, CFG, max_steps=20)
    assert len(made) and list(made.columns) == FORECAST_COLUMNS
    assert list(score_table(made).columns) == SCORE_COLUMNS
