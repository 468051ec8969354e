import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phaseflip.config import BenchGenerator, ForecastBenchConfig, ForecastConfig, compose, validate
from phaseflip.forecast.bench import bench, bench_tables, main, run_bench, simulate_study
from phaseflip.forecast.bench_model import SimModel, fit_model
from phaseflip.forecast.methods import METHODS, configuration_of
from phaseflip.forecast.scores import format_summary
from phaseflip.run_folder import evaluated_runs

CFG = ForecastConfig(forecast_bootstrap=20,
                     bench=ForecastBenchConfig(n_runs=8, runs_per_study=4, n_bootstrap=20, processes=1))
# the pre-registered generators, as conf/forecast/ declares them
REGISTERED = validate(compose([])).forecast.bench.generators


def write_study(root: Path, model: SimModel, n_runs: int, seed: int = 0) -> list[Path]:
    """Simulated runs written as a study writes them: run.json, scenarios.csv, metrics.csv, train_log.csv."""
    dirs = []
    for r in simulate_study(model, n_runs, 0.0, 0.5, np.random.default_rng(seed)):
        d = root / "runs" / r.run.run_id
        d.mkdir(parents=True)
        sc = r.run.scenarios.rename(columns={"x": model.metric, "k": "behavior_k"}).assign(family="in_distribution")
        sc.to_csv(d / "scenarios.csv", index=False)
        c, rate = r.run.curve, r.run.curve.k / r.run.curve.n
        tidy = [pd.DataFrame({"step": c.step, "family": "in_distribution", "metric": name, "value": v, "lo": v,
                              "hi": v, "n": n}) for name, v, n in [(model.metric, c.x, 1), ("behavior_rate", rate, c.n)]
        ]
        pd.concat(tidy).to_csv(d / "metrics.csv", index=False)
        r.run.train_log.to_csv(d / "train_log.csv", index=False)
        (d / "run.json").write_text(json.dumps({"run_id": r.run.run_id, "lr": r.run.lr, "control": False}))
        dirs.append(d)
    return dirs


def test_the_model_is_fitted_to_the_study(tmp_path: Path) -> None:
    truth = SimModel(n_scenarios=12, link_intercept=-2.0, link_slope=2.5, speed_exponent=1.0, sd_log_speed=0.05,
                     lr_range=(5e-4, 4e-3), steps=[0, 2, 4, 6, 8, 10, 12, 16], x0=-0.6)
    fitted = fit_model(evaluated_runs(write_study(tmp_path, truth, 6)), CFG)
    # the base model's level (formal: p_preferred 0.36, logit -0.6); left at 0, the simulated base rate sat
    # above the threshold and 94% of the simulated runs could not cross
    assert fitted.x0 == pytest.approx(-0.6, abs=0.3) and "x0" in fitted.fitted
    assert fitted.steps == truth.steps and fitted.n_scenarios == 12 and "link" in fitted.fitted
    assert fitted.link_slope == pytest.approx(2.5, rel=0.3)
    assert fitted.link_intercept / fitted.link_slope == pytest.approx(-0.8, abs=0.25)  # the crossing level
    assert fitted.speed_exponent == pytest.approx(1.0, abs=0.35)
    assert fitted.lr_range[0] < 5e-4 * 1.5 and fitted.lr_range[1] > 4e-3 / 1.5


def test_without_a_study_the_documented_defaults_are_used() -> None:
    model = fit_model([], CFG)
    assert model.source.startswith("defaults") and model.fitted == [] and model == SimModel()


def test_the_design_is_read_from_the_study(tmp_path: Path) -> None:
    dirs = write_study(tmp_path, SimModel(n_scenarios=6), 3)
    fitted = fit_model(evaluated_runs(dirs), CFG)
    assert [d[0] for d in fitted.design] == ["sim000", "sim001", "sim002"] and "design" in fitted.fitted


def test_every_issue_generator_is_pre_registered() -> None:
    assert set(REGISTERED) == {"fitted", "floor_ceiling", "plateau", "delayed_onset", "bending", "scenario_shapes",
                               "real_design"}
    assert REGISTERED["fitted"] == BenchGenerator(description=REGISTERED["fitted"].description)
    assert all(g.description for g in REGISTERED.values())


def expected_rate(gen: str, seed: int = 0, n_runs: int = 12, model: SimModel | None = None) -> list:
    return simulate_study(model or SimModel(), n_runs, 0.0, 0.5, np.random.default_rng(seed), REGISTERED[gen])


def test_generators_depart_from_the_fitted_model_as_registered() -> None:
    steps = np.asarray(SimModel().steps, float)

    def rates(study: list) -> np.ndarray:  # (runs, steps) pooled rates
        return np.array([(r.run.curve.k / r.run.curve.n).to_numpy(float) for r in study])

    fitted, floor, plateau = rates(expected_rate("fitted")), rates(expected_rate("floor_ceiling")), \
        rates(expected_rate("plateau"))
    assert floor.min() > 0.05 and fitted[:, 0].mean() < floor[:, 0].mean()  # the floor lifts the base rate
    assert plateau.max() < 0.9 and fitted.max() > 0.9  # a plateau below 1
    onset = expected_rate("delayed_onset")
    flat = [r for r in onset if r.truth is not None and r.truth > 6]
    assert flat  # some runs start late
    x = np.array([r.run.curve.x.to_numpy(float) for r in onset])
    assert np.abs(x[:, 1] - x[:, 0]).mean() < np.abs(x[:, -1] - x[:, 0]).mean() / 5  # flat first
    real = expected_rate("real_design")
    ids = [r.run.run_id for r in real]
    assert ids == [d[0] for d in SimModel().design]  # the study's runs, not log-uniform learning rates
    configs = [configuration_of(i) for i in ids]
    assert len(set(configs)) < len(configs)  # seeds share a configuration
    assert [r.run.control for r in real].count(True) == 1
    assert len(steps) == x.shape[1]


def test_scenarios_are_not_affine_copies_under_scenario_shapes() -> None:
    def affine_residual(gen: str) -> float:
        res = []
        quiet = SimModel(metric="margin", bounded=False, sd_noise=0, sd_step=0, lr_range=(3e-3, 6e-3))
        for r in expected_rate(gen, n_runs=4, model=quiet):
            wide = r.run.scenarios.pivot_table(index="scenario_id", columns="step", values="x").to_numpy(float)
            pooled = wide.mean(axis=0)
            design = np.column_stack([np.ones_like(pooled), pooled])
            coef, *_ = np.linalg.lstsq(design, wide.T, rcond=None)
            res.append(float(np.sqrt(((wide.T - design @ coef) ** 2).mean())))
        return float(np.mean(res))

    assert affine_residual("fitted") < 1e-6  # the fitted model: exact affine copies without noise
    assert affine_residual("scenario_shapes") > 0.05


def test_bench_is_deterministic_for_a_seed_and_scores_every_method_and_generator() -> None:
    cfg = CFG.model_copy(update={"bench": CFG.bench.model_copy(update={"n_bootstrap": 10, "generators": {
        "fitted": REGISTERED["fitted"], "bending": REGISTERED["bending"]}})})
    a = run_bench(SimModel(), cfg, n_runs=4, seed=3)
    b = run_bench(SimModel(), cfg, n_runs=4, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.generator) == {"fitted", "bending"} and a.groupby("generator").run_id.nunique().min() == 4
    assert set(a.method) == set(METHODS) | {"pooled_link_recalibrated"}  # the recalibrated primary beside them
    only = run_bench(SimModel(), cfg, n_runs=4, seed=3, generators=["bending"])  # the same draws, alone
    pd.testing.assert_frame_equal(only.reset_index(drop=True), a[a.generator == "bending"].reset_index(drop=True))
    _, summary = bench_tables(a, cfg, 16)
    assert list(zip(summary.generator, summary.method, strict=True)) == [
        ("fitted", "pooled_link"), ("fitted", "pooled_link_recalibrated"),
        ("bending", "pooled_link"), ("bending", "pooled_link_recalibrated")]
    assert "| fitted · pooled_link |" in format_summary(summary) and "| fitted |" in format_summary(summary.iloc[:1])
    other = run_bench(SimModel(), cfg, n_runs=4, seed=4, generators=["fitted"])
    assert not other.equals(a[a.generator == "fitted"].reset_index(drop=True))


def test_bench_writes_tables_and_the_pit_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = write_study(tmp_path / "study", SimModel(n_scenarios=6), 4)
    cfg = CFG.model_copy(update={"bench": CFG.bench.model_copy(update={"only": ["fitted"]})})
    bench(dirs, cfg, tmp_path / "out", n_runs=4)
    for name in ["bench_summary.csv", "bench_quality.csv", "bench_forecasts.csv", "calibration.csv",
                 "calibration.png", "model.json"]:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "out" / "model.json").read_text())["source"] == "fitted to 4 runs"
    assert "| fitted · pooled_link_recalibrated |" in capsys.readouterr().out
    fc = pd.read_csv(tmp_path / "out" / "bench_forecasts.csv")
    assert {"run_id", "method", "origin_step", "crossed_by_origin", "p_cross_by_max_steps", "predicted", "q10", "q25",
            "q50", "q75", "q90", "crps", "pit"} <= set(fc.columns)


def test_command_line(tmp_path: Path) -> None:
    assert main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--runs", "3", "study=smoke",
                 "forecast.bench.runs_per_study=3"]) == 0
    s = pd.read_csv(tmp_path / "o" / "bench_summary.csv")
    assert list(s.generator.drop_duplicates()) == ["fitted", "real_design"]  # the smoke preset's `only`
