import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phaseflip.config import ForecastBenchConfig, ForecastConfig
from phaseflip.forecast import calibration, forecast_quality
from phaseflip.forecast_bench import bench, format_table, main, run_bench, simulate_study
from phaseflip.forecast_bench_model import SimModel, fit_model, load_study

CFG = ForecastConfig(cutoffs=[0.5, 0.75], forecast_bootstrap=20,
                     bench=ForecastBenchConfig(n_runs=8, runs_per_study=4, n_bootstrap=20, processes=1))


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
    fitted = fit_model(load_study(write_study(tmp_path, truth, 6)), CFG)
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


def test_bench_is_deterministic_for_a_seed_and_scores_every_method_and_cutoff() -> None:
    a = run_bench(SimModel(), CFG, n_runs=8, seed=3)
    b = run_bench(SimModel(), CFG, n_runs=8, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.run_id.nunique() == 8
    q = forecast_quality(a)
    assert len(q) == 6 * 2 and set(q.method) == {"pooled_link", "per_scenario", "lr_scaling", "linear",
                                                 "grad_norm_peak", "change_point"}
    assert "**pooled_link** (primary)" in format_table(q)
    assert not run_bench(SimModel(), CFG, n_runs=8, seed=4).equals(a)


def test_interval_coverage_on_a_small_simulated_batch_is_near_nominal() -> None:
    cfg = CFG.model_copy(update={"bench": ForecastBenchConfig(n_runs=36, runs_per_study=6, n_bootstrap=40,
                                                              processes=1, control_share=0.0)})
    rows = run_bench(SimModel(), cfg, seed=0)
    made = rows[(rows.method == "pooled_link") & rows.covered.notna()]
    assert len(made) >= 25
    assert 0.6 <= made.covered.astype(float).mean() <= 0.97  # nominal 0.8; a batch of ~40 forecasts
    cal = calibration(rows).set_index(["method", "nominal"])
    assert cal.loc[("pooled_link", 0.5), "actual"] < cal.loc[("pooled_link", 0.95), "actual"]


def test_bench_writes_table_and_calibration_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = write_study(tmp_path / "study", SimModel(n_scenarios=6), 4)
    bench(dirs, CFG, tmp_path / "out", n_runs=8)
    for name in ["bench_quality.csv", "bench_forecasts.csv", "calibration.csv", "calibration.png", "model.json"]:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "out" / "model.json").read_text())["source"] == "fitted to 4 runs"
    assert "**pooled_link** (primary)" in capsys.readouterr().out


def test_command_line(tmp_path: Path) -> None:
    assert main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--runs", "6", "study=smoke",
                 "forecast.bench.runs_per_study=3"]) == 0
    q = pd.read_csv(tmp_path / "o" / "bench_quality.csv")
    assert set(q.cutoff_fraction) == {0.25, 0.5, 0.75}
