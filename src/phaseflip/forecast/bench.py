"""The forecasting benchmark: every forecast method scored on simulated runs whose t50 is known.

A generative model is fitted to a finished study's own runs (`fit_model`; documented defaults for what
the study cannot tell, or for everything when there is no study). Then, for each pre-registered generator
of `forecast.bench.generators` (conf/forecast/), at least `n_runs` runs are drawn in simulated studies of
`runs_per_study` runs each (or of the study's own design), and every run is forecast from every
checkpoint exactly as the study's runs are (`phaseflip.forecast.analysis.forecast_run`: the run's view at the
origin, the other configurations of its simulated study) and scored (`phaseflip.forecast.scores`).

The fitted generator. Per simulated study: the same in-distribution scenarios for every run, each with
random effects (an offset of the metric, a speed multiplier, a behavior propensity); the base model
(step 0) shared. Per run: a learning rate (log-uniform over the study's range), the metric's trajectory
on the link scale (logit for metrics in (0, 1)) `x0 + u_j + v w_j step^p` plus noise per checkpoint and
per scenario x checkpoint, with the speed v proportional to lr^kappa times run-level noise;
control-like runs (a share) do not move. Each scenario's replies are binomial at
`logistic(a + b x + b_j)` with the study's sample sizes (near the threshold and away from it) on its
checkpoint schedule; the gradient norm peaks at the study's ratio of its peak to t50. The truth: the
step where the expected rate over the study's scenarios (without the noise) crosses the threshold; runs
that do not reach it by max_steps do not cross.

The other generators (`config.BenchGenerator`) depart from it, each outside some forecaster's model
class: a rate with a floor and a ceiling, a metric that saturates and a rate that plateaus below 1, a
delayed onset (flat, then a fast rise), a trajectory that bends with autocorrelated noise (not a power
law), scenarios with their own powers and delays (not affine copies), and the study's own design (its
learning rates, seeds, extra runs and control) instead of log-uniform learning rates.

    python -m phaseflip.forecast.bench                      # fits results/runs/*, writes results/forecast/bench/
    python -m phaseflip.forecast.bench --results /path/results --runs 60 --seed 0 --out /tmp/bench
    python -m phaseflip.forecast.bench study=smoke          # Hydra overrides pick the forecast config
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phaseflip.config import BenchGenerator, ForecastConfig
from phaseflip.forecast.analysis import forecast_run
from phaseflip.forecast.bench_model import SimModel, fit_model
from phaseflip.forecast.methods import RunData
from phaseflip.forecast.recalibration import Recalibrator, recalibrated_name
from phaseflip.forecast.scores import INTERVALS, format_summary, score_forecasts, score_table, summary_row
from phaseflip.io import write_csv, write_json
from phaseflip.run_folder import evaluated_runs
from phaseflip.stats.t50 import fit_t50

__all__ = ["SimModel", "fit_model", "simulate_study", "run_bench", "main"]


def _logistic(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


@dataclass
class SimRun:
    run: RunData
    truth: float | None  # the known t50 (None: does not cross by max_steps)
    speed: float


@dataclass
class _Effects:
    """A simulated study's scenarios: offsets, speeds, propensities, and (scenario_shapes) powers, delays."""

    offsets: np.ndarray
    speeds: np.ndarray
    propensity: np.ndarray
    powers: np.ndarray | None
    delays: np.ndarray


def _clock(model: SimModel, gen: BenchGenerator, t: np.ndarray, onset: float, bend: float) -> np.ndarray:
    """The trajectory's own time: flat until the onset, then `onset_speedup` times faster (delayed_onset);
    `bend` times faster after `bend_at` (bending)."""
    t = np.asarray(t, float)
    if gen.onset is not None:
        t = np.maximum(0.0, t - onset) * gen.onset_speedup
    if gen.bend_at is not None:
        tb = gen.bend_at * model.max_steps
        t = np.where(t < tb, t, tb + (t - tb) * bend)
    return t


def _crossing_rise(model: SimModel, gen: BenchGenerator, threshold: float) -> float:
    """The rise of the metric (link scale) from x0 at which a typical scenario's rate reaches the threshold."""
    share = (threshold - gen.floor) / (gen.ceiling - gen.floor)
    if not 0 < share < 1:
        return 1.0
    level = (math.log(share / (1 - share)) - model.link_intercept) / model.link_slope
    return max(level - model.x0, 0.1)


def _mean_y(model: SimModel, gen: BenchGenerator, eff: _Effects, t: np.ndarray, v: float, onset: float,
            bend: float, threshold: float) -> np.ndarray:
    """(J, T): each scenario's metric on the link scale without noise."""
    tau = _clock(model, gen, t, onset, bend)
    if eff.powers is not None:  # scenario_shapes: own power and delay, the same magnitude at half the run
        ref = model.max_steps / 2
        tj = np.maximum(0.0, tau[None, :] - eff.delays[:, None])
        rise = v * eff.speeds[:, None] * ref**model.exponent * np.power(tj / ref, eff.powers[:, None])
    else:
        rise = v * eff.speeds[:, None] * np.power(tau, model.exponent)[None, :]
    if gen.plateau is not None:
        top = gen.plateau * _crossing_rise(model, gen, threshold)
        rise = top * (1 - np.exp(-rise / top))
    return np.asarray(model.x0 + eff.offsets[:, None] + rise)


def _rate(model: SimModel, gen: BenchGenerator, y: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    q = _logistic(model.link_intercept + model.link_slope * y + propensity[:, None])
    return np.asarray(gen.floor + (gen.ceiling - gen.floor) * q)


def _truth(model: SimModel, gen: BenchGenerator, eff: _Effects, v: float, onset: float, bend: float,
           threshold: float, until: float) -> float | None:
    """First step where the expected rate over the study's scenarios, without noise, reaches the threshold."""
    grid = np.linspace(0, until, int(until * 20) + 1)
    rate = _rate(model, gen, _mean_y(model, gen, eff, grid, v, onset, bend, threshold), eff.propensity).mean(axis=0)
    hit = np.nonzero(rate >= threshold)[0]
    return float(grid[hit[0]]) if len(hit) and grid[hit[0]] > 0 else None


def _step_noise(sd: float, ar: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-checkpoint noise of the metric (0 at step 0, the base model): AR(1) with marginal sd `sd`."""
    e = rng.normal(0, sd, n)
    for i in range(1, n):
        e[i] = ar * e[i - 1] + math.sqrt(1 - ar**2) * e[i]
    e[0] = 0.0
    return e


def _design(model: SimModel, gen: BenchGenerator, n_runs: int, control_share: float,
            rng: np.random.Generator) -> list[tuple[str, float, bool]]:
    """(run_id, lr, control) of a simulated study's runs: the study's own, or log-uniform learning rates
    (each run its own configuration) with a share of controls."""
    if gen.design == "study":
        return [(str(r), float(lr), bool(c)) for r, lr, c in model.design]
    out = []
    for i in range(n_runs):
        control = bool(rng.random() < control_share)
        out.append((f"sim{i:03d}", float(np.exp(rng.uniform(*np.log(model.lr_range)))), control))
    return out


def simulate_study(model: SimModel, n_runs: int, control_share: float, threshold: float,
                   rng: np.random.Generator, gen: BenchGenerator | None = None) -> list[SimRun]:
    """One simulated study: shared scenarios and base model, `n_runs` runs (the design's, for a generator
    with `design: study`) with known t50."""
    gen = gen or BenchGenerator()
    J, steps = model.n_scenarios, np.asarray(model.steps, float)
    eff = _Effects(rng.normal(0, model.sd_offset, J), np.exp(rng.normal(0, model.sd_speed, J)),
                   rng.normal(0, model.sd_propensity, J),
                   rng.uniform(*gen.scenario_exponent, J) if gen.scenario_exponent else None,
                   rng.uniform(0, gen.scenario_delay * model.max_steps, J))
    base_noise = rng.normal(0, model.sd_noise, J)  # step 0 is the same model for every run
    near, far = np.asarray(model.n_near), np.asarray(model.n_far)
    base_n = rng.choice(far, J)
    out = []
    for run_id, lr, control in _design(model, gen, n_runs, control_share, rng):
        v = 0.0 if control else float(np.exp(model.log_speed_ref + model.speed_exponent
                                              * math.log(lr / model.lr_ref) + rng.normal(0, model.sd_log_speed)))
        onset = float(rng.uniform(*gen.onset)) * model.max_steps if gen.onset else 0.0
        bend = float(np.exp(rng.uniform(*np.log(gen.bend_factor))))
        cell = rng.normal(0, model.sd_noise, (J, len(steps)))
        cell[:, 0] = base_noise
        y = (_mean_y(model, gen, eff, steps, v, onset, bend, threshold)
             + _step_noise(model.sd_step * gen.noise_scale, gen.noise_ar, len(steps), rng)[None, :] + cell)
        q = _rate(model, gen, y, eff.propensity)
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
        truth = _truth(model, gen, eff, v, onset, bend, threshold, model.max_steps)
        far_truth = truth or _truth(model, gen, eff, v, onset, bend, threshold, 3 * model.max_steps)
        out.append(SimRun(RunData(run_id, lr, control, sc, curve, _grad_log(model, far_truth, rng)), truth, v))
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


def _bench_study(args: tuple[SimModel, str, BenchGenerator, ForecastConfig, int, int, np.random.SeedSequence,
                             list[str] | None]) -> pd.DataFrame:
    model, name, gen, cfg, n_runs, index, seq, methods = args
    rng = np.random.default_rng(seq)
    study = simulate_study(model, n_runs, cfg.bench.control_share, cfg.flip_threshold, rng, gen)
    runs = [o.run for o in study]
    recalibrator = Recalibrator(runs, cfg, model.max_steps) if cfg.recalibration.method else None
    rows = []
    for i, r in enumerate(study):
        rows += forecast_run(r.run, runs, cfg, model.max_steps, seed=index * 1000 + i, methods=methods,
                             recalibrator=recalibrator)
    scored = score_forecasts(rows, {r.run.run_id: r.truth for r in study}, model.max_steps, seed=index)
    estimated = {r.run.run_id: r.run.t50 for r in study}
    scored["estimated_t50"] = scored.run_id.map(estimated)
    scored["run_id"] = f"{name}-study{index:03d}-" + scored.run_id
    scored.insert(0, "generator", name)
    scored.insert(1, "study", index)
    return scored


def run_bench(model: SimModel, cfg: ForecastConfig, n_runs: int | None = None, seed: int | None = None,
              processes: int | None = None, generators: list[str] | None = None,
              methods: list[str] | None = None) -> pd.DataFrame:
    """Scored forecast rows of every generator (`generators`, default `forecast.bench.only` or all) x run x
    origin x method (default all), at least `n_runs` runs per generator (deterministic for a seed, whatever
    the number of processes or the generators chosen)."""
    bench = cfg.bench
    n_runs = n_runs or bench.n_runs
    bench_cfg = cfg.model_copy(update={"forecast_bootstrap": bench.n_bootstrap})
    names = generators or bench.only or list(bench.generators)
    seqs = np.random.SeedSequence(bench.seed if seed is None else seed).spawn(len(bench.generators))
    jobs = []
    for g, name in enumerate(bench.generators):
        if name not in names:
            continue
        gen = bench.generators[name]
        per = len(model.design) if gen.design == "study" else bench.runs_per_study
        count = math.ceil(n_runs / per)  # at least n_runs, in whole studies
        jobs += [(model, name, gen, bench_cfg, per, i, s, methods) for i, s in enumerate(seqs[g].spawn(count))]
    workers = processes or bench.processes
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_bench_study, jobs))
    else:
        results = [_bench_study(job) for job in jobs]
    return pd.concat(results, ignore_index=True)


def summary_methods(cfg: ForecastConfig, present: set[str]) -> list[str]:
    """The methods a summary table has a row for: the primary, and the recalibrated method when it ran."""
    out: list[str] = [cfg.primary]
    if cfg.recalibration.method:
        name = recalibrated_name(cfg.recalibration.method)
        if name in present and name not in out:
            out.append(name)
    return out


def bench_tables(rows: pd.DataFrame, cfg: ForecastConfig, max_steps: float, seed: int = 0
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per generator: the per method x origin scores, and the generator's summary line (one for the primary,
    one for the recalibrated method)."""
    quality, summary = [], []
    for name, g in rows.groupby("generator", sort=False):
        table = score_table(g, seed)
        quality.append(table.assign(generator=name))
        for method in summary_methods(cfg, set(g.method)):
            summary.append(summary_row(g, table, method, max_steps, str(name), seed))
    return pd.concat(quality, ignore_index=True), pd.DataFrame(summary)


def calibration(rows: pd.DataFrame) -> pd.DataFrame:
    """Nominal vs actual coverage of the central intervals, per generator and method (origins pooled): the
    PIT's (`actual`, see `forecast.scores`) and the plain interval's (`interval`)."""
    made = rows[rows.forecast_made.astype(bool)]
    out = []
    for (gen, method), g in made.groupby(["generator", "method"], sort=False):
        for level in INTERVALS:
            out.append({"generator": gen, "method": method, "nominal": level / 100,
                        "actual": float(g[f"pit_coverage_{level}"].astype(float).mean()),
                        "interval": float(g[f"covered_{level}"].astype(float).mean()), "n": len(g)})
    return pd.DataFrame(out, columns=["generator", "method", "nominal", "actual", "interval", "n"])


def write_bench(rows: pd.DataFrame, model: SimModel, cfg: ForecastConfig, out: Path, seconds: float
                ) -> pd.DataFrame:
    from phaseflip.forecast.pit import pit_figure

    quality, summary = bench_tables(rows, cfg, model.max_steps, cfg.bench.seed)
    write_csv(out / "bench_forecasts.csv", rows)
    write_csv(out / "bench_quality.csv", quality)
    write_csv(out / "bench_summary.csv", summary)
    write_csv(out / "calibration.csv", calibration(rows))
    write_json(out / "model.json", {**asdict(model), "runs": int(rows.run_id.nunique()),
                                    "generators": {k: v.model_dump() for k, v in cfg.bench.generators.items()},
                                    "seconds": round(seconds, 1)})
    pit_figure(rows, [cfg.primary, "linear", "climatology"], out / "calibration.png")
    return summary


def bench(run_dirs: list[Path], cfg: ForecastConfig, out: Path, n_runs: int | None = None,
          seed: int | None = None, processes: int | None = None) -> pd.DataFrame:
    """Fit the model to the study's runs (defaults when none), simulate every generator, forecast, score,
    write; returns the per-generator summary."""
    started = time.time()
    model = fit_model(evaluated_runs(run_dirs), cfg)
    rows = run_bench(model, cfg, n_runs, seed, processes)
    summary = write_bench(rows, model, cfg, out, time.time() - started)
    print(f"forecast bench: {rows.run_id.nunique()} simulated runs ({model.source}) in "
          f"{time.time() - started:.0f}s, primary {cfg.primary}, origins from 0.25 of max_steps "
          f"{model.max_steps} pooled\n{format_summary(summary)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    from phaseflip.config import compose, validate

    p = argparse.ArgumentParser(prog="python -m phaseflip.forecast.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="a finished study's results/ (runs/*/ are read)")
    p.add_argument("--out", default="results/forecast/bench")
    p.add_argument("--runs", type=int, default=None, help="simulated runs per generator (default: "
                                                          "forecast.bench.n_runs)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=smoke forecast.bench.processes=1")
    args = p.parse_args(argv)
    cfg = validate(compose(args.overrides)).forecast
    run_dirs = sorted(d for d in (Path(args.results) / "runs").glob("*") if (d / "run.json").exists())
    bench(run_dirs, cfg, Path(args.out), args.runs, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
