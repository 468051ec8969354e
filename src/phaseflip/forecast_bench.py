"""The forecasting benchmark (§7): every forecast method scored on simulated runs whose t50 is known.

A generative model is fitted to a finished study's own runs (`fit_model`; documented defaults for what
the study cannot tell, or for everything when there is no study), then at least `n_runs` runs are drawn in
simulated studies of `runs_per_study` runs each, so every link and scaling is calibrated leave-one-run-
out on as few runs as a real study has. Per simulated study: the same in-distribution scenarios for
every run, each with random effects (an offset of the metric, a speed multiplier, a behavior
propensity); the base model (step 0) shared. Per run: a learning rate (log-uniform over the study's
range), the metric's trajectory on the link scale (logit for metrics in (0, 1)) `x0 + u_j + v w_j
step^p` plus noise per checkpoint and per scenario x checkpoint, with the speed v proportional to
lr^kappa times run-level noise; control-like runs (a share) do not move. Each scenario's replies are
binomial at `logistic(a + b x + b_j)` with the study's sample sizes (near the threshold and away
from it) on its checkpoint schedule; the gradient norm peaks at the study's ratio of its peak to t50.
The truth: the step where the expected rate over the study's scenarios (without the noise) crosses
the threshold; runs that do not reach it by max_steps do not cross.

    python -m phaseflip.forecast_bench                      # fits results/runs/*, writes results/forecast/bench/
    python -m phaseflip.forecast_bench --results /path/results --runs 500 --seed 0 --out /tmp/bench
    python -m phaseflip.forecast_bench study=smoke          # Hydra overrides pick the forecast config
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phaseflip.config import ForecastConfig
from phaseflip.forecast import calibration, forecast_quality, forecast_run
from phaseflip.forecast_bench_model import SimModel, fit_model, load_study
from phaseflip.forecast_methods import RunData
from phaseflip.io import write_csv, write_json
from phaseflip.transition import fit_t50

__all__ = ["SimModel", "fit_model", "load_study", "simulate_study", "run_bench", "main"]


def _logistic(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


@dataclass
class SimRun:
    run: RunData
    truth: float | None  # the known t50 (None: does not cross by max_steps)
    speed: float


def _truth(model: SimModel, y_mean: np.ndarray, offsets: np.ndarray, speeds: np.ndarray, propensity: np.ndarray,
           v: float, threshold: float, until: float) -> float | None:
    """First step where the expected rate over the study's scenarios, without noise, reaches the threshold."""
    grid = np.linspace(0, until, int(until * 20) + 1)
    y = y_mean + offsets[:, None] + v * speeds[:, None] * np.power(grid, model.exponent)[None, :]
    rate = _logistic(model.link_intercept + model.link_slope * y + propensity[:, None]).mean(axis=0)
    hit = np.nonzero(rate >= threshold)[0]
    return float(grid[hit[0]]) if len(hit) and grid[hit[0]] > 0 else None


def simulate_study(model: SimModel, n_runs: int, control_share: float, threshold: float,
                   rng: np.random.Generator) -> list[SimRun]:
    """One simulated study: shared scenarios and base model, `n_runs` runs with known t50."""
    J, steps = model.n_scenarios, np.asarray(model.steps, float)
    offsets = rng.normal(0, model.sd_offset, J)
    speeds = np.exp(rng.normal(0, model.sd_speed, J))
    propensity = rng.normal(0, model.sd_propensity, J)
    base_noise = rng.normal(0, model.sd_noise, J)  # step 0 is the same model for every run
    near, far = np.asarray(model.n_near), np.asarray(model.n_far)
    base_n = rng.choice(far, J)
    out = []
    for i in range(n_runs):
        control = bool(rng.random() < control_share)
        lr = float(np.exp(rng.uniform(*np.log(model.lr_range))))
        v = 0.0 if control else float(np.exp(model.log_speed_ref + model.speed_exponent
                                              * math.log(lr / model.lr_ref) + rng.normal(0, model.sd_log_speed)))
        step_noise = np.concatenate([[0.0], rng.normal(0, model.sd_step, len(steps) - 1)])
        cell = rng.normal(0, model.sd_noise, (J, len(steps)))
        cell[:, 0] = base_noise
        y = (model.x0 + offsets[:, None] + v * speeds[:, None] * np.power(steps, model.exponent)[None, :]
             + step_noise[None, :] + cell)
        q = _logistic(model.link_intercept + model.link_slope * y + propensity[:, None])
        pooled = q.mean(axis=0)
        n = np.where((pooled > 0.2) & (pooled < 0.8), rng.choice(near, (J, len(steps))),
                     rng.choice(far, (J, len(steps))))
        n[:, 0] = base_n
        k = rng.binomial(n, q)
        x = _logistic(y) if model.bounded else y
        sc = pd.DataFrame({"step": np.tile(steps, J), "scenario_id": np.repeat([f"s{j:02d}" for j in range(J)],
                                                                                   len(steps)),
                           "x": x.ravel(), "k": k.ravel().astype(float), "n": n.ravel().astype(float)})
        curve = sc.groupby("step").agg(x=("x", "mean"), k=("k", "sum"), n=("n", "sum")).reset_index()
        truth = _truth(model, np.array([model.x0]), offsets, speeds, propensity, v, threshold, model.max_steps)
        far_truth = truth or _truth(model, np.array([model.x0]), offsets, speeds, propensity, v, threshold,
                                    3 * model.max_steps)
        out.append(SimRun(RunData(f"sim{i:03d}", lr, control, sc, curve,
                                  _grad_log(model, far_truth, rng)), truth, v))
    _estimate_t50(out, threshold)
    return out


def _grad_log(model: SimModel, t: float | None, rng: np.random.Generator) -> pd.DataFrame:
    """Gradient norm per step: a bump at ratio x t50 (t50 as far as the trajectory goes), else decaying."""
    s = np.arange(1, model.max_steps + 1, dtype=float)
    if t is None:
        g = 1 + 1 / s
    else:
        peak, width = model.grad_peak_ratio * t, max(1.0, 0.3 * t)
        g = 1 + 2 * np.exp(-((s - peak) ** 2) / (2 * width**2))
    return pd.DataFrame({"step": s, "grad_norm": g * np.exp(rng.normal(0, model.sd_grad, len(s)))})


def _estimate_t50(runs: list[SimRun], threshold: float) -> None:
    """What a study would know of each run as *another* run: t50 measured by `fit_t50` (not the truth)
    and the metric's level there."""
    for r in runs:
        counts = r.run.scenarios[["step", "scenario_id", "k", "n"]]
        est = fit_t50(counts, threshold, n_bootstrap=2, confidence=0.95, seed=0).t50
        r.run.t50 = est
        c = r.run.curve
        r.run.level_at_flip = None if est is None else float(np.interp(est, c.step, c.x))


def _bench_study(args: tuple[SimModel, ForecastConfig, int, int, np.random.SeedSequence]) -> list[dict[str, Any]]:
    model, cfg, n_runs, index, seq = args
    rng = np.random.default_rng(seq)
    study = simulate_study(model, n_runs, cfg.bench.control_share, cfg.flip_threshold, rng)
    rows = []
    for i, r in enumerate(study):
        others = [o.run for o in study[:i] + study[i + 1:]]
        for row in forecast_run(r.run, r.truth, others, cfg, model.max_steps, seed=index * 1000 + i):
            rows.append({**row, "study": index, "run_id": f"study{index:03d}-{r.run.run_id}",
                         "estimated_t50": r.run.t50})
    return rows


def run_bench(model: SimModel, cfg: ForecastConfig, n_runs: int | None = None, seed: int | None = None,
              processes: int | None = None) -> pd.DataFrame:
    """Forecast rows of every method x cutoff on `n_runs` simulated runs (deterministic for a seed,
    whatever the number of processes)."""
    bench = cfg.bench
    n_runs = n_runs or bench.n_runs
    per = bench.runs_per_study
    sizes = [per] * math.ceil(n_runs / per)  # at least n_runs, in whole studies
    bench_cfg = cfg.model_copy(update={"forecast_bootstrap": bench.n_bootstrap})
    seqs = np.random.SeedSequence(bench.seed if seed is None else seed).spawn(len(sizes))
    jobs = [(model, bench_cfg, size, i, seqs[i]) for i, size in enumerate(sizes)]
    workers = processes or bench.processes
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_bench_study, jobs))
    else:
        results = [_bench_study(job) for job in jobs]
    return pd.DataFrame([row for rows in results for row in rows])


def write_bench(rows: pd.DataFrame, model: SimModel, out: Path, seconds: float) -> pd.DataFrame:
    from phaseflip.figures import calibration_figure

    quality = forecast_quality(rows)
    calib = calibration(rows)
    write_csv(out / "bench_forecasts.csv", rows)
    write_csv(out / "bench_quality.csv", quality)
    write_csv(out / "calibration.csv", calib)
    write_json(out / "model.json", {**asdict(model), "runs": int(rows.run_id.nunique()),
                                    "runs_crossing": int(rows.drop_duplicates("run_id").actual.notna().sum()),
                                    "seconds": round(seconds, 1)})
    calibration_figure(calib, out / "calibration.png")
    return quality


def format_table(quality: pd.DataFrame) -> str:
    """The per method x cutoff table, as printed and as in the report."""
    def f(v: Any, digits: int = 2) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    lines = ["| method | cutoff | median rel. error [95%] | within ±25% | 80% coverage | mean lead | false alarms |",
             "|---|---|---|---|---|---|---|"]
    for q in quality.itertuples():
        name = f"**{q.method}** (primary)" if q.primary else q.method
        lines.append(
            f"| {name} | {q.cutoff_fraction:g} | {f(q.median_relative_error)} [{f(q.median_relative_error_lo)}, "
            f"{f(q.median_relative_error_hi)}] | {f(q.within_25)} of {q.runs_crossing} | {f(q.interval_coverage)} "
            f"({q.forecasts_made} made) | {f(q.mean_lead_time, 1)} | {q.false_alarms} of {q.runs_not_crossing} |")
    return "\n".join(lines)


def bench(run_dirs: list[Path], cfg: ForecastConfig, out: Path, n_runs: int | None = None,
          seed: int | None = None, processes: int | None = None) -> pd.DataFrame:
    """Fit the model to the study's runs (defaults when none), simulate, forecast, score and write."""
    started = time.time()
    model = fit_model(load_study(run_dirs), cfg)
    rows = run_bench(model, cfg, n_runs, seed, processes)
    quality = write_bench(rows, model, out, time.time() - started)
    print(f"forecast bench: {rows.run_id.nunique()} simulated runs ({model.source}) in "
          f"{time.time() - started:.0f}s\n{format_table(quality)}")
    return quality


def main(argv: list[str] | None = None) -> int:
    from phaseflip.config import compose, validate

    p = argparse.ArgumentParser(prog="python -m phaseflip.forecast_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="a finished study's results/ (runs/*/ are read)")
    p.add_argument("--out", default="results/forecast/bench")
    p.add_argument("--runs", type=int, default=None, help="simulated runs (default: forecast.bench.n_runs)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=smoke forecast.bench.processes=1")
    args = p.parse_args(argv)
    cfg = validate(compose(args.overrides)).forecast
    run_dirs = sorted(d for d in (Path(args.results) / "runs").glob("*") if (d / "run.json").exists())
    bench(run_dirs, cfg, Path(args.out), args.runs, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

