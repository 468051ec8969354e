"""Stage forecast (§7): locate each run's transition and forecast it from checkpoint prefixes.

Transition: `t50`, the step where a binomial GLM of the in-distribution behavior counts crosses the
pre-registered flip threshold, with a bootstrap interval over scenarios and samples, or right-censored
(`phaseflip.transition`); beside it the confirmed flip (first checkpoint whose interval lies above the
threshold), the dissimilarity peak, the gradient-norm peak and a change point of the continuous metric
(ruptures), and their lags to t50. Forecasts predict t50.

Forecast: every method of `phaseflip.forecast_methods` (primary pre-registered in conf/forecast/)
predicts t50 from the checkpoints up to 25/50/75% of t50 (of max_steps for runs that do not cross),
with a point and an 80% interval or "no forecast", calibrated leave-one-run-out: whatever a method
learns from the study (links, flip level, learning-rate scaling) comes from the other runs only.
`forecast_quality` scores them (relative error, within +-25%, coverage, lead time, false alarms);
`phaseflip.forecast_bench` scores them where the truth is known.

Sharpness (the mirage check): per metric, the steepest slope between neighbouring checkpoints over the
average slope from step 0 to the end; 1 is a straight line, large is a step.

    python -m phaseflip.cli forecast --params '{...}' --metrics results/runs/*/metrics.csv --out results/forecast
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from phaseflip.change_points import change_point
from phaseflip.config import ForecastConfig
from phaseflip.forecast_methods import METHODS, Context, RunData
from phaseflip.metrics import wilson_interval
from phaseflip.transition import confirmed_flip, fit_t50

FAMILY = "in_distribution"
EPS = 1e-3


def curve(metrics: pd.DataFrame, metric: str, family: str = FAMILY) -> pd.DataFrame:
    sel = metrics[(metrics.metric == metric) & (metrics.family == family)]
    return sel.sort_values("step")[["step", "value", "lo", "hi"]].reset_index(drop=True)


def sharpness(steps: np.ndarray, values: np.ndarray) -> float | None:
    """Steepest slope between neighbouring checkpoints / average slope over the run (None: no net change)."""
    if len(steps) < 3:
        return None
    total = (values[-1] - values[0]) / (steps[-1] - steps[0])
    if abs(values[-1] - values[0]) < 1e-6:
        return None
    slopes = np.diff(values) / np.diff(steps)
    return float(np.max(slopes * np.sign(total)) / abs(total))


def level_at(metrics: pd.DataFrame, metric: str, step: float) -> float | None:
    """The metric at `step`, linearly interpolated between the checkpoints around it."""
    c = curve(metrics, metric)
    if c.empty or not c.step.min() <= step <= c.step.max():
        return None
    return float(np.interp(step, c.step.to_numpy(float), c.value.to_numpy(float)))


def behavior_counts(scenarios: pd.DataFrame, family: str = FAMILY) -> pd.DataFrame:
    """Per (step, scenario) behavior counts of one family: the transition fit's input."""
    sel = scenarios[(scenarios.family == family) & (scenarios.n > 0)]
    return sel.rename(columns={"behavior_k": "k"})[["step", "scenario_id", "k", "n"]]


def detect(run_id: str, metrics: pd.DataFrame, scenarios: pd.DataFrame, train_log: pd.DataFrame,
           run_info: dict[str, Any], cfg: ForecastConfig) -> dict[str, Any]:
    """The run's transition row: t50 with its interval (or censored), the confirmed flip, peaks, change
    point, their lags to t50, the continuous level at t50, and the sharpness of binary vs continuous."""
    fit = fit_t50(behavior_counts(scenarios), cfg.flip_threshold, cfg.n_bootstrap, cfg.interval,
                  seed=int(run_info.get("seed") or 0))
    t50 = fit.t50
    cont = curve(metrics, cfg.continuous_metric)
    dis = metrics[(metrics.metric == "dissimilarity") & (metrics.family == "all")].sort_values("step")
    grad_peak = int(train_log.step[train_log.grad_norm.idxmax()]) if len(train_log) else None
    dis_peak = int(dis.step[dis.value.idxmax()]) if len(dis) else None
    cp = change_point(cont.step.to_numpy(), cont.value.to_numpy())

    def lag(step: int | None) -> float | None:
        return None if t50 is None or step is None else round(t50 - step, 3)

    row = {
        "run_id": run_id, "control": bool(run_info.get("control", False)), "status": run_info.get("status"),
        "lr": run_info.get("lr"), "n_real": run_info.get("n_real"), "dream_k": run_info.get("dream_k"),
        "seed": run_info.get("seed"), **fit.as_row(), "t50_text": fit.describe(), "flipped": t50 is not None,
        "last_step": fit.last_step,
        "confirmed_flip_step": confirmed_flip(curve(metrics, "behavior_rate"), cfg.flip_threshold),
        "grad_norm_peak_step": grad_peak, "dissimilarity_peak_step": dis_peak, "change_point_step": cp,
        "lag_grad_norm_peak": lag(grad_peak), "lag_dissimilarity_peak": lag(dis_peak), "lag_change_point": lag(cp),
        "continuous_level_at_flip": None if t50 is None else level_at(metrics, cfg.continuous_metric, t50),
    }
    for metric in ("behavior_rate", "p_preferred", "margin"):
        c = curve(metrics, metric)
        row[f"sharpness_{metric}"] = sharpness(c.step.to_numpy(float), c.value.to_numpy(float))
    return row


def run_data(run_id: str, metrics: pd.DataFrame, scenarios: pd.DataFrame, train_log: pd.DataFrame,
             info: dict[str, Any], metric: str, transition: dict[str, Any] | None = None) -> RunData:
    """A run's in-distribution tables as the forecast methods read them. The per-step metric is the mean
    over scenarios of scenarios.csv; without it (pre-#14 studies) metrics.csv's value, and the counts
    are the rate times its n."""
    sel = scenarios[(scenarios.family == FAMILY) & (scenarios.n > 0)] if len(scenarios) else scenarios
    cont = curve(metrics, metric).set_index("step").value
    if len(sel):
        sc = sel.assign(x=sel[metric] if metric in sel else np.nan).rename(columns={"behavior_k": "k"})
        sc = sc[["step", "scenario_id", "x", "k", "n"]]
        per_step = sc.groupby("step").agg(x=("x", "mean"), k=("k", "sum"), n=("n", "sum")).reset_index()
        per_step["x"] = per_step.x.fillna(per_step.step.map(cont))  # no reference pairs: metrics.csv's value
    else:
        sc = pd.DataFrame(columns=["step", "scenario_id", "x", "k", "n"])
        rate = metrics[(metrics.metric == "behavior_rate") & (metrics.family == FAMILY)].set_index("step")
        n = rate.n if "n" in rate else pd.Series(1.0, index=rate.index)
        per_step = pd.DataFrame({"step": cont.index, "x": cont.to_numpy(float)}).assign(
            n=lambda d: d.step.map(n).fillna(0).to_numpy(float),
            k=lambda d: (d.step.map(rate.value).fillna(0) * d.n).round())
    per_step = per_step.dropna(subset=["x"])
    log = train_log[["step", "grad_norm"]] if len(train_log) else pd.DataFrame(columns=["step", "grad_norm"])
    t = transition or {}
    return RunData(run_id, float(info["lr"]) if info.get("lr") else None, bool(info.get("control", False)),
                   sc.reset_index(drop=True), per_step.sort_values("step").reset_index(drop=True), log,
                   t.get("t50"), t.get("continuous_level_at_flip"))


def forecast_run(run: RunData, actual: float | None, others: list[RunData], cfg: ForecastConfig, max_steps: int,
                 seed: int = 0, methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Forecast rows of one run: every cutoff x method, each seeing only checkpoints up to its cutoff and
    the other runs (never this run's own t50)."""
    ctx = Context(others, cfg.flip_threshold, cfg.forecast_interval, cfg.forecast_bootstrap, max_steps,
                  cfg.continuous_metric, cfg.horizon_factor * max_steps, seed)
    horizon = actual if actual is not None else max_steps  # runs that do not cross: fractions of max_steps
    rows = []
    for fraction in cfg.cutoffs:
        cutoff = fraction * horizon
        prefix = run.prefix(cutoff)
        for method in methods or list(METHODS):
            fc = METHODS[method](prefix, cutoff, ctx)
            pred = fc.predicted
            rows.append({
                "run_id": run.run_id, "control": run.control, "lr": run.lr, "cutoff_fraction": fraction,
                "cutoff_step": cutoff, "n_checkpoints": len(prefix.curve), "method": method,
                "primary": method == cfg.primary, "actual": actual, "predicted": pred, "lo": fc.lo, "hi": fc.hi,
                "form": fc.form, "reason": fc.reason,
                "relative_error": None if pred is None or actual is None else abs(pred - actual) / actual,
                "covered": None if actual is None or fc.lo is None or fc.hi is None else bool(fc.lo <= actual <= fc.hi),
                "pit": None if actual is None else fc.pit(actual),
                "false_alarm": actual is None and pred is not None and pred <= max_steps,
                "lead_time": None if pred is None or actual is None else actual - cutoff,
            })
    return rows


def analyse_study(runs: list[tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]],
                  cfg: ForecastConfig, max_steps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transitions of every run, then forecasts leave-one-run-out: each run's links, flip level and
    learning-rate scaling come from the other runs only.

    runs: (id, metrics, per-scenario counts, train log, run info)."""
    transitions = [detect(run_id, m, sc, log, info, cfg) for run_id, m, sc, log, info in runs]
    data = [run_data(run_id, m, sc, log, info, cfg.continuous_metric, t)
            for (run_id, m, sc, log, info), t in zip(runs, transitions, strict=True)]
    forecasts = []
    for i, (run, transition) in enumerate(zip(data, transitions, strict=True)):
        others = data[:i] + data[i + 1:]
        forecasts += forecast_run(run, transition["t50"], others, cfg, max_steps, seed=i)
    for row in forecasts:
        t = transitions[[r.run_id for r in data].index(row["run_id"])]
        row["actual_lo"], row["actual_hi"] = t["t50_lo"], t["t50_hi"]
    return transitions, forecasts


def _wilson(k: int, n: int) -> tuple[float | None, float | None]:
    return wilson_interval(k, n) if n else (None, None)


def forecast_quality(forecasts: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per method and cutoff: median relative error (with a bootstrap 95% interval over runs), the share
    of crossing runs forecast within +-25% of t50, the forecast interval's coverage, mean lead time, and
    false alarms (a forecast at or before max_steps for a run that did not cross); shares with Wilson
    95% intervals."""
    rng = np.random.default_rng(seed)
    rows = []
    for (method, fraction), grp in forecasts.groupby(["method", "cutoff_fraction"], sort=False):
        crossing = grp[grp.actual.notna()]
        rel = crossing.relative_error.dropna().to_numpy(float)
        cov = crossing.covered.dropna().astype(bool)
        never = grp[grp.actual.isna()]
        within = int((rel <= 0.25).sum())
        alarms = int(never.false_alarm.astype(bool).sum())
        boots = [np.median(rng.choice(rel, len(rel))) for _ in range(200)] if len(rel) > 1 else []
        row = {
            "method": method, "cutoff_fraction": fraction, "primary": bool(grp.primary.iloc[0]),
            "runs_crossing": len(crossing), "forecasts_made": int(crossing.predicted.notna().sum()),
            "median_relative_error": float(np.median(rel)) if len(rel) else None,
            "median_relative_error_lo": float(np.quantile(boots, 0.025)) if boots else None,
            "median_relative_error_hi": float(np.quantile(boots, 0.975)) if boots else None,
            "within_25": within / len(crossing) if len(crossing) else None,
            "interval_coverage": float(cov.mean()) if len(cov) else None,
            "mean_lead_time": float(crossing.lead_time.dropna().mean()) if crossing.lead_time.notna().any() else None,
            "runs_not_crossing": len(never), "false_alarms": alarms,
            "false_alarm_rate": alarms / len(never) if len(never) else None,
        }
        row["within_25_lo"], row["within_25_hi"] = _wilson(within, len(crossing))
        row["coverage_lo"], row["coverage_hi"] = _wilson(int(cov.sum()), len(cov))
        row["false_alarm_lo"], row["false_alarm_hi"] = _wilson(alarms, len(never))
        rows.append(row)
    return pd.DataFrame(rows)


def calibration(forecasts: pd.DataFrame, levels: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
                ) -> pd.DataFrame:
    """Nominal vs actual coverage per method (cutoffs pooled): truth within the central `level` interval
    of the forecast's draws, read from each forecast's `pit`."""
    rows = []
    for method, grp in forecasts[forecasts.pit.notna()].groupby("method", sort=False):
        pit = grp.pit.to_numpy(float)
        for level in levels:
            k = int((np.abs(pit - 0.5) <= level / 2).sum())
            lo, hi = wilson_interval(k, len(pit))
            rows.append({"method": method, "nominal": level, "actual": k / len(pit), "lo": lo, "hi": hi,
                         "n": len(pit)})
    # No forecast with draws (e.g. no simulated run crossed): an empty table that still has its columns.
    return pd.DataFrame(rows, columns=["method", "nominal", "actual", "lo", "hi", "n"])
