"""Stage forecast (§7): locate each run's transition and forecast it from checkpoint prefixes.

Transition: the first step whose `behavior_rate` Wilson interval lies wholly above the pre-registered
flip threshold (in-distribution family). Beside it: the dissimilarity peak, the gradient-norm peak
and a change point of the continuous metric (ruptures), and their lags to the transition.

Forecast: from checkpoints up to a cutoff only, fit the continuous order parameter as a logistic
curve in step or in log-step (= a line in logit space; the form with the smaller leave-last-out error
wins), and predict the step where it crosses the threshold, with a residual-bootstrap interval.
Baseline: a straight line through the same prefix.

    python -m phaseflip.cli forecast --params '{...}' --metrics results/runs/*/metrics.csv --out results/forecast
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import ruptures as rpt

from phaseflip.config import ForecastConfig

FAMILY = "in_distribution"
EPS = 1e-3


def curve(metrics: pd.DataFrame, metric: str, family: str = FAMILY) -> pd.DataFrame:
    sel = metrics[(metrics.metric == metric) & (metrics.family == family)]
    return sel.sort_values("step")[["step", "value", "lo", "hi"]].reset_index(drop=True)


def transition_step(metrics: pd.DataFrame, threshold: float) -> int | None:
    """First step whose behavior_rate interval lies above the threshold; None if the run never flips."""
    rate = curve(metrics, "behavior_rate")
    above = rate[rate.lo > threshold]
    return int(above.step.iloc[0]) if len(above) else None


def change_point(steps: np.ndarray, values: np.ndarray) -> int | None:
    """The single most likely change point of a series (ruptures, least-squares cost)."""
    if len(values) < 4:
        return None
    bkps = rpt.Binseg(model="l2", min_size=1, jump=1).fit(values.reshape(-1, 1)).predict(n_bkps=1)
    return int(steps[bkps[0]]) if bkps and bkps[0] < len(steps) else None


def _logit(y: np.ndarray) -> np.ndarray:
    y = np.clip(y, EPS, 1 - EPS)
    return np.log(y / (1 - y))


def _fit_line(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, z, 1)
    return float(slope), float(intercept)


def _crossing(slope: float, intercept: float, target: float, inverse: Any) -> float | None:
    if slope <= 0:
        return None
    return float(inverse((target - intercept) / slope))


FORMS = {  # name: (transform of step, inverse)
    "logistic_step": (lambda s: s, lambda x: x),
    "logistic_log_step": (lambda s: np.log1p(s), lambda x: math.expm1(x) if x < 50 else math.inf),
}


def logistic_forecast(steps: np.ndarray, values: np.ndarray, threshold: float, n_bootstrap: int,
                      interval: float, seed: int = 0) -> dict[str, Any]:
    """Predicted crossing step (and interval) of a logistic fit; `predicted=None` means no flip forecast."""
    if len(steps) < 3:
        return {"predicted": None, "lo": None, "hi": None, "form": None, "reason": "fewer than 3 checkpoints"}
    z, target = _logit(values), float(_logit(np.array([threshold]))[0])
    errors = {}
    for name, (fwd, _) in FORMS.items():  # choose the form by held-out error on the last point
        slope, intercept = _fit_line(fwd(steps[:-1]), z[:-1])
        errors[name] = abs(slope * fwd(steps[-1]) + intercept - z[-1])
    form = min(errors, key=lambda k: errors[k])
    fwd, inv = FORMS[form]
    slope, intercept = _fit_line(fwd(steps), z)
    predicted = _crossing(slope, intercept, target, inv)
    if predicted is None or not math.isfinite(predicted):
        return {"predicted": None, "lo": None, "hi": None, "form": form, "reason": "metric not rising"}
    rng = np.random.default_rng(seed)
    resid = z - (slope * fwd(steps) + intercept)
    boots = []
    for _ in range(n_bootstrap):
        zb = slope * fwd(steps) + intercept + rng.choice(resid, size=len(resid), replace=True)
        crossing = _crossing(*_fit_line(fwd(steps), zb), target, inv)
        boots.append(crossing if crossing is not None and math.isfinite(crossing) else math.inf)
    # A rise that the noise could explain is no forecast: most resamples must also cross.
    if np.mean(np.isfinite(boots)) < interval:
        return {"predicted": None, "lo": None, "hi": None, "form": form, "reason": "rise not significant"}
    alpha = (1 - interval) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"predicted": max(predicted, float(steps[-1])), "lo": float(lo), "hi": float(hi), "form": form,
            "reason": ""}


def linear_forecast(steps: np.ndarray, values: np.ndarray, threshold: float) -> dict[str, Any]:
    """Baseline: a straight line through the prefix, extrapolated to the threshold."""
    if len(steps) < 2:
        return {"predicted": None, "reason": "fewer than 2 checkpoints"}
    slope, intercept = _fit_line(steps, values)
    crossing = _crossing(slope, intercept, threshold, lambda x: x)
    return {"predicted": None if crossing is None else max(crossing, float(steps[-1])), "reason": ""}


def analyse_run(run_id: str, metrics: pd.DataFrame, train_log: pd.DataFrame, run_info: dict[str, Any],
                cfg: ForecastConfig, max_steps: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's transition row and its forecast rows (one per cutoff and method)."""
    threshold = cfg.flip_threshold
    flip = transition_step(metrics, threshold)
    cont = curve(metrics, cfg.continuous_metric)
    dis = metrics[metrics.metric == "dissimilarity"].sort_values("step")
    grad_peak = int(train_log.step[train_log.grad_norm.idxmax()]) if len(train_log) else None
    dis_peak = int(dis.step[dis.value.idxmax()]) if len(dis) else None
    cp = change_point(cont.step.to_numpy(), cont.value.to_numpy())
    transition = {
        "run_id": run_id, "control": run_info.get("control", False), "status": run_info.get("status"),
        "lr": run_info.get("lr"), "n_real": run_info.get("n_real"), "dream_k": run_info.get("dream_k"),
        "transition_step": flip, "flipped": flip is not None,
        "grad_norm_peak_step": grad_peak, "dissimilarity_peak_step": dis_peak, "change_point_step": cp,
        "lag_grad_norm_peak": None if flip is None or grad_peak is None else flip - grad_peak,
        "lag_dissimilarity_peak": None if flip is None or dis_peak is None else flip - dis_peak,
        "lag_change_point": None if flip is None or cp is None else flip - cp,
    }
    forecasts = []
    horizon = flip if flip is not None else max_steps  # never-flipping runs: the same absolute cutoffs
    for fraction in cfg.cutoffs:
        cutoff = fraction * horizon
        prefix = cont[cont.step <= cutoff]
        steps, values = prefix.step.to_numpy(float), prefix.value.to_numpy(float)
        methods = {
            "logistic": logistic_forecast(steps, values, threshold, cfg.n_bootstrap, cfg.interval),
            "linear": linear_forecast(steps, values, threshold),
        }
        for method, fc in methods.items():
            pred = fc["predicted"]
            forecasts.append({
                "run_id": run_id, "control": transition["control"], "cutoff_fraction": fraction,
                "cutoff_step": cutoff, "n_checkpoints": len(steps), "method": method, "actual": flip,
                "predicted": pred, "lo": fc.get("lo"), "hi": fc.get("hi"), "form": fc.get("form"),
                "reason": fc.get("reason", ""),
                "relative_error": None if pred is None or flip is None else abs(pred - flip) / flip,
                "covered": None if flip is None or fc.get("lo") is None else bool(fc["lo"] <= flip <= fc["hi"]),
                "false_alarm": flip is None and pred is not None and pred <= max_steps,
                "lead_time": None if pred is None or flip is None else flip - cutoff,
            })
    return transition, forecasts


def forecast_quality(forecasts: pd.DataFrame) -> pd.DataFrame:
    """Per method and cutoff: median relative error, interval coverage, false alarms, forecasts made."""
    rows = []
    for (method, fraction), grp in forecasts.groupby(["method", "cutoff_fraction"]):
        flipped = grp[grp.actual.notna()]
        rel = flipped.relative_error.dropna()
        cov = flipped.covered.dropna()
        never = grp[grp.actual.isna()]
        rows.append({
            "method": method, "cutoff_fraction": fraction, "runs_flipped": len(flipped),
            "forecasts_made": int(flipped.predicted.notna().sum()),
            "median_relative_error": float(rel.median()) if len(rel) else None,
            "interval_coverage": float(cov.astype(float).mean()) if len(cov) else None,
            "mean_lead_time": float(flipped.lead_time.dropna().mean()) if flipped.lead_time.notna().any() else None,
            "runs_never_flipped": len(never), "false_alarms": int(never.false_alarm.sum()),
        })
    return pd.DataFrame(rows)
