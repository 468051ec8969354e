"""The transition analysis: locate each run's transition and forecast it from every checkpoint, as it would be used.

Transition: `t50`, the step where a binomial fit of the in-distribution behavior counts (logit-linear,
or with a floor and a ceiling) crosses the pre-registered flip threshold, with a bootstrap interval over
scenarios and samples, or right-censored, or levelling off below it (`phaseflip.stats.t50`); beside it
the confirmed flip (first checkpoint whose interval lies above the threshold), the dissimilarity peak,
the gradient-norm peak and a change point of the continuous metric (ruptures), and their lags to t50.

Forecast, at fixed origins: at every evaluated checkpoint `s` of a run, every method of
`phaseflip.forecast.methods` sees what a researcher has at `s` (the run's checkpoints up to `s`: a
view, `RunData.prefix`) and the finished runs of the *other configurations* (leave-one-configuration-out:
the run's replicates, its other seeds, are not "other runs"). `check_no_leak` guards every call. If the
view shows the crossing (the transition fit on the checkpoints so far), the row is "already crossed",
not a forecast; otherwise the method's draws of t50, conditioned on "not crossed by s" (observed) and
censored at max_steps, give `p_cross_by_max_steps` and quantiles (`inf`: beyond max_steps).
`phaseflip.forecast.scores` scores them (CRPS of the censored target, coverage, PIT, Brier, skill vs
`linear` and `climatology`, lead time); `phaseflip.forecast.bench` does the same where the truth is known.

The mirage test (`phaseflip.stats.mirage`): per run, and pooled over the non-control runs, whether step
explains the sampled rate beyond a fixed link of the continuous metric (`mirage_table`). Beside it, as a
description only (no verdict is read from it), the sharpness per metric: the steepest slope between
neighbouring checkpoints over the average slope from step 0 to the end; 1 is a straight line.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from phaseflip.config import ForecastConfig
from phaseflip.data import IN_DISTRIBUTION
from phaseflip.forecast.methods import METHODS, RunData
from phaseflip.forecast.recalibration import Recalibrator, describe, recalibrated_name
from phaseflip.forecast.scores import score_forecasts
from phaseflip.forecast.view import check_no_leak, condition, context_for, crossed_by, other_configurations
from phaseflip.run_folder import RunRecord
from phaseflip.stats.change_points import best_change_point
from phaseflip.stats.mirage import MirageTest, mirage_test, run_cells
from phaseflip.stats.t50 import confirmed_flip, fit_t50

EPS = 1e-3


def curve(metrics: pd.DataFrame, metric: str, family: str = IN_DISTRIBUTION) -> pd.DataFrame:
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


def behavior_counts(scenarios: pd.DataFrame, family: str = IN_DISTRIBUTION) -> pd.DataFrame:
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
    cp = best_change_point(cont.step.to_numpy(), cont.value.to_numpy())

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


def _mirage(cells: pd.DataFrame, cfg: ForecastConfig, seed: int) -> MirageTest:
    inf = cfg.inference
    return mirage_test(cells, bounded=cfg.continuous_metric != "margin", link_df=inf.mirage_link_df,
                       step_df=inf.mirage_step_df, n_draws=inf.mirage_draws, seed=seed)


def mirage_table(runs: list[RunRecord], cfg: ForecastConfig) -> pd.DataFrame:
    """The mirage test per run and pooled over the non-control runs (the same scenarios in each: clustered
    on scenario), on the in-distribution cells with the configured continuous metric."""
    rows, pooled = [], []
    for i, (run_id, _, scenarios, _, info) in enumerate(runs):
        cells = run_cells(scenarios, cfg.continuous_metric, IN_DISTRIBUTION)
        if not bool(info.get("control", False)):
            pooled.append(cells.assign(run=run_id))
        rows.append({"run_id": run_id, "control": bool(info.get("control", False)), **_mirage_row(
            _mirage(cells, cfg, seed=i), cfg)})
    cells = pd.concat(pooled, ignore_index=True) if pooled else run_cells(pd.DataFrame(), cfg.continuous_metric, "")
    rows.append({"run_id": "pooled", "control": False, **_mirage_row(_mirage(cells, cfg, seed=len(runs)), cfg)})
    return pd.DataFrame(rows)


def _mirage_row(test: MirageTest, cfg: ForecastConfig) -> dict[str, Any]:
    return {"metric": cfg.continuous_metric, "statistic": test.statistic, "p_value": test.p_value,
            "step_terms": test.df_num, "cells": test.n_cells, "scenarios": test.n_scenarios,
            "verdict": test.verdict(cfg.inference.alpha), "reason": test.reason}


def run_data(run_id: str, metrics: pd.DataFrame, scenarios: pd.DataFrame, train_log: pd.DataFrame,
             info: dict[str, Any], metric: str, transition: dict[str, Any] | None = None) -> RunData:
    """A run's in-distribution tables as the forecast methods read them. The per-step metric is the mean
    over scenarios of scenarios.csv; without it (older studies) metrics.csv's value, and the counts
    are the rate times its n."""
    sel = scenarios[(scenarios.family == IN_DISTRIBUTION) & (scenarios.n > 0)] if len(scenarios) else scenarios
    cont = curve(metrics, metric).set_index("step").value
    if len(sel):
        sc = sel.assign(x=sel[metric] if metric in sel else np.nan).rename(columns={"behavior_k": "k"})
        sc = sc[["step", "scenario_id", "x", "k", "n"]]
        per_step = sc.groupby("step").agg(x=("x", "mean"), k=("k", "sum"), n=("n", "sum")).reset_index()
        per_step["x"] = per_step.x.fillna(per_step.step.map(cont))  # no reference pairs: metrics.csv's value
    else:
        sc = pd.DataFrame(columns=["step", "scenario_id", "x", "k", "n"])
        rate = metrics[(metrics.metric == "behavior_rate") & (metrics.family == IN_DISTRIBUTION)].set_index("step")
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


QUANTILES = {"q025": 0.025, "q10": 0.1, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q90": 0.9, "q975": 0.975}


def summarise(draws: np.ndarray, max_steps: float) -> dict[str, float]:
    """p(crossing by max_steps) and quantiles of t50 censored at max_steps (inf: "beyond max_steps")."""
    censored = np.where(draws > max_steps, math.inf, draws)
    qs = np.quantile(censored, list(QUANTILES.values()), method="inverted_cdf")
    return {"p_cross_by_max_steps": float(np.mean(draws <= max_steps)), "predicted": float(qs[3]),
            **{k: float(v) for k, v in zip(QUANTILES, qs, strict=True)}}


def forecast_at(view: RunData, others: list[RunData], cfg: ForecastConfig, max_steps: int, seed: int,
                methods: list[str], recalibrator: Recalibrator | None = None) -> list[dict[str, Any]]:
    """Every method's forecast from one origin (the view's): "already crossed" when the view shows the
    crossing; otherwise each method's draws, conditioned on not having crossed yet and censored at
    max_steps. With a `recalibrator`, its method's forecast also comes recalibrated on the other
    configurations' PITs (a row of its own, `<method>_recalibrated`). Raises `LeakageError` when the view
    or the other runs carry what the origin cannot know."""
    origin = float(view.origin if view.origin is not None else math.nan)
    check_no_leak(view, others, origin)
    crossed = crossed_by(view, cfg.flip_threshold)
    ctx = context_for(others, cfg, max_steps, seed)
    base = {"run_id": view.run_id, "configuration": view.configuration, "control": view.control, "lr": view.lr,
            "origin_step": origin, "origin_fraction": origin / max_steps, "n_checkpoints": len(view.curve),
            "crossed_by_origin": crossed}
    recalibrated = recalibrator.method if recalibrator is not None and recalibrator.method in methods else None

    def empty(method: str) -> dict[str, Any]:
        return {**base, "method": method, "primary": method == cfg.primary, "forecast_made": False,
                "p_cross_by_max_steps": math.nan, "predicted": math.nan, **dict.fromkeys(QUANTILES, math.nan),
                "form": None, "reason": "already crossed", "_draws": None}

    rows = []
    for method in methods:
        row = empty(method)
        if not crossed:
            fc = METHODS[method](view, origin, ctx)
            row["form"], row["reason"] = fc.form, fc.reason
            if fc.draws is not None and len(fc.draws):
                draws = condition(np.asarray(fc.draws, float), origin)
                row.update(forecast_made=True, _draws=draws, **summarise(draws, max_steps))
        rows.append(row)
        if method == recalibrated and recalibrator is not None:
            again = {**empty(recalibrated_name(method)), "form": row["form"], "reason": row["reason"]}
            if row["_draws"] is not None:
                draws, n_pits = recalibrator.recalibrate(view, origin, row["_draws"])
                again.update(forecast_made=True, _draws=draws, form=describe(row["form"], n_pits),
                             **summarise(draws, max_steps))
            rows.append(again)
    return rows


def forecast_run(run: RunData, others: list[RunData], cfg: ForecastConfig, max_steps: int, seed: int = 0,
                 methods: list[str] | None = None, recalibrator: Recalibrator | None = None) -> list[dict[str, Any]]:
    """Forecast rows of one run: at every evaluated checkpoint before max_steps (the origin), every method,
    each seeing the run's view at that origin and the finished runs of other configurations (never this
    run's outcome); with a `recalibrator` (built on the study's runs), its method recalibrated too.
    Rows carry their draws under `_draws` for `forecast.scores.score_forecasts`."""
    others = other_configurations(run, others)
    rows = []
    # the last checkpoint at max_steps is no origin: the budget is spent, "crosses by max_steps" is observed
    for i, origin in enumerate(s for s in run.curve.step.to_numpy(float) if s < max_steps):
        rows += forecast_at(run.prefix(origin), others, cfg, max_steps, seed * 1000 + i, methods or list(METHODS),
                            recalibrator)
    return rows


def analyse_study(runs: list[RunRecord], cfg: ForecastConfig,
                  max_steps: int) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Transitions of every run, then fixed-origin forecasts leave-one-configuration-out, scored against
    each run's measured t50 (censored at max_steps).

    runs: (id, metrics, per-scenario counts, train log, run info)."""
    transitions = [detect(run_id, m, sc, log, info, cfg) for run_id, m, sc, log, info in runs]
    data = [run_data(run_id, m, sc, log, info, cfg.continuous_metric, t)
            for (run_id, m, sc, log, info), t in zip(runs, transitions, strict=True)]
    recalibrator = Recalibrator(data, cfg, max_steps) if cfg.recalibration.method else None
    rows = []
    for i, run in enumerate(data):
        rows += forecast_run(run, data, cfg, max_steps, seed=i, recalibrator=recalibrator)
    truth = {t["run_id"]: t["t50"] for t in transitions}
    return transitions, score_forecasts(rows, truth, max_steps)
