"""Stage forecast (§7): locate each run's transition and forecast it from checkpoint prefixes.

Transition: `t50`, the step where a binomial GLM of the in-distribution behavior counts crosses the
pre-registered flip threshold, with a bootstrap interval over scenarios and samples, or right-censored
(`phaseflip.transition`); beside it the confirmed flip (first checkpoint whose interval lies above the
threshold), the dissimilarity peak, the gradient-norm peak and a change point of the continuous metric
(ruptures), and their lags to t50. Forecasts predict t50.

Forecast: from checkpoints up to a cutoff only, fit the continuous order parameter as a logistic
curve in step or in log-step (= a line in logit space; the form with the smaller leave-last-out error
wins), and predict the step where it reaches the flip's level, with a residual-bootstrap interval.
The flip's level in continuous units is calibrated leave-one-run-out: the median level at which the
study's *other* runs flipped (a configured prior when none did). Baselines on the same prefix: a
straight line, the gradient-norm peak, and a change point of the continuous metric.

Sharpness (the mirage check): per metric, the steepest slope between neighbouring checkpoints over the
average slope from step 0 to the end; 1 is a straight line, large is a step.

    python -m phaseflip.cli forecast --params '{...}' --metrics results/runs/*/metrics.csv --out results/forecast
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import ruptures as rpt

from phaseflip.config import ForecastConfig
from phaseflip.transition import confirmed_flip, fit_t50

FAMILY = "in_distribution"
EPS = 1e-3


def curve(metrics: pd.DataFrame, metric: str, family: str = FAMILY) -> pd.DataFrame:
    sel = metrics[(metrics.metric == metric) & (metrics.family == family)]
    return sel.sort_values("step")[["step", "value", "lo", "hi"]].reset_index(drop=True)


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
    # A crossing is never forecast before the last checkpoint seen: clamp the point and its interval alike.
    floor = float(steps[-1])
    return {"predicted": max(predicted, floor), "lo": max(float(lo), floor), "hi": max(float(hi), floor),
            "form": form, "reason": ""}


def linear_forecast(steps: np.ndarray, values: np.ndarray, threshold: float) -> dict[str, Any]:
    """Baseline: a straight line through the prefix, extrapolated to the threshold."""
    if len(steps) < 2:
        return {"predicted": None, "reason": "fewer than 2 checkpoints"}
    slope, intercept = _fit_line(steps, values)
    crossing = _crossing(slope, intercept, threshold, lambda x: x)
    return {"predicted": None if crossing is None else max(crossing, float(steps[-1])), "reason": ""}


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


def penalised_change_point(steps: np.ndarray, values: np.ndarray, min_t: float = 5.0) -> int | None:
    """The best single change point (ruptures), kept only if its mean shift is significant: |t| > min_t.

    The threshold is high because the split was chosen as the best of many (a max-of-t statistic).
    """
    if len(values) < 4:
        return None
    bkp = rpt.Binseg(model="l2", min_size=2, jump=1).fit(values.reshape(-1, 1)).predict(n_bkps=1)[0]
    left, right = values[:bkp], values[bkp:]
    if len(left) < 2 or len(right) < 2:
        return None
    resid = np.concatenate([left - left.mean(), right - right.mean()])
    sigma = float(np.sqrt((resid**2).sum() / max(1, len(values) - 2))) + 1e-9
    t = abs(right.mean() - left.mean()) / (sigma * math.sqrt(1 / len(left) + 1 / len(right)))
    return int(steps[bkp]) if t > min_t else None


def grad_norm_peak_forecast(train_log: pd.DataFrame, cutoff: float) -> dict[str, Any]:
    """Baseline: the flip comes at the gradient-norm peak, once the peak is behind us (norm has fallen)."""
    prefix = train_log[train_log.step <= cutoff]
    if len(prefix) < 3:
        return {"predicted": None, "reason": "fewer than 3 logged steps"}
    peak = int(prefix.step[prefix.grad_norm.idxmax()])
    if peak >= int(prefix.step.max()):
        return {"predicted": None, "reason": "gradient norm still rising"}
    return {"predicted": float(peak), "reason": ""}


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


def forecast_run(transition: dict[str, Any], metrics: pd.DataFrame, train_log: pd.DataFrame, level: float,
                 level_source: str, cfg: ForecastConfig, max_steps: int) -> list[dict[str, Any]]:
    """Forecast rows of one run: every cutoff x method, each seeing only checkpoints up to its cutoff."""
    flip = transition["t50"]
    cont = curve(metrics, cfg.continuous_metric)
    horizon = flip if flip is not None else max_steps  # never-flipping runs: the same absolute cutoffs
    rows = []
    for fraction in cfg.cutoffs:
        cutoff = fraction * horizon
        prefix = cont[cont.step <= cutoff]
        steps, values = prefix.step.to_numpy(float), prefix.value.to_numpy(float)
        cp = penalised_change_point(steps, values)
        methods = {
            "logistic": logistic_forecast(steps, values, level, cfg.n_bootstrap, cfg.interval),
            "linear": linear_forecast(steps, values, level),
            "grad_norm_peak": grad_norm_peak_forecast(train_log, cutoff),
            "change_point": {"predicted": None if cp is None else float(cp),
                             "reason": "" if cp is not None else "no change point in the prefix"},
        }
        for method, fc in methods.items():
            pred = fc["predicted"]
            rows.append({
                "run_id": transition["run_id"], "control": transition["control"], "cutoff_fraction": fraction,
                "cutoff_step": cutoff, "n_checkpoints": len(steps), "method": method, "actual": flip,
                "level": level, "level_source": level_source,
                "predicted": pred, "lo": fc.get("lo"), "hi": fc.get("hi"), "form": fc.get("form"),
                "reason": fc.get("reason", ""),
                "relative_error": None if pred is None or flip is None else abs(pred - flip) / flip,
                "covered": None if flip is None or fc.get("lo") is None else bool(fc["lo"] <= flip <= fc["hi"]),
                "false_alarm": flip is None and pred is not None and pred <= max_steps,
                "lead_time": None if pred is None or flip is None else flip - cutoff,
            })
    return rows


def flip_level(transitions: list[dict[str, Any]], run_id: str, cfg: ForecastConfig) -> tuple[float, str]:
    """The continuous level that marks a flip, for forecasting `run_id` without looking at its own flip."""
    if cfg.continuous_level is not None:
        return cfg.continuous_level, "configured"
    others = [t["continuous_level_at_flip"] for t in transitions
              if t["run_id"] != run_id and t["flipped"] and not t["control"]
              and t["continuous_level_at_flip"] is not None]
    if others:
        return float(np.median(others)), f"median of {len(others)} other flipped run(s)"
    return cfg.continuous_level_prior, "prior (no other run flipped)"


def analyse_study(runs: list[tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]],
                  cfg: ForecastConfig, max_steps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transitions of every run, then forecasts calibrated leave-one-run-out.

    runs: (id, metrics, per-scenario counts, train log, run info)."""
    transitions = [detect(run_id, m, sc, log, info, cfg) for run_id, m, sc, log, info in runs]
    forecasts = []
    for (run_id, metrics, _, log, _), transition in zip(runs, transitions, strict=True):
        level, source = flip_level(transitions, run_id, cfg)
        forecasts += forecast_run(transition, metrics, log, level, source, cfg, max_steps)
    return transitions, forecasts


def forecast_quality(forecasts: pd.DataFrame) -> pd.DataFrame:
    """Per method and cutoff: median relative error, interval coverage, lead time, false alarms."""
    rows = []
    for (method, fraction), grp in forecasts.groupby(["method", "cutoff_fraction"], sort=False):
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
            "runs_never_flipped": len(never), "false_alarms": int(never.false_alarm.astype(bool).sum()),
        })
    return pd.DataFrame(rows)
