"""The benchmark's generative model (`phaseflip.forecast.bench`), fitted to a finished study's runs.

Every parameter has a documented default (`SimModel`'s field values: a SmolLM2-like study where lr 1e-3
crosses near step 12); `fit_model` replaces each one the study can estimate and records which in
`fitted`:

- schedule, max_steps, number of in-distribution scenarios, sample sizes (near the threshold and away):
  read off scenarios.csv (metrics.csv for the schedule of studies written before per-scenario counts existed);
- the per-scenario link `logistic(a + b x)`: a binomial GLM (statsmodels) on every checkpoint of every
  run (per step from metrics.csv when there is no scenarios.csv);
- the trajectory on the link scale, `x(step) - x(0) = v step^p`, per non-control run (scipy curve_fit);
  `log v` on `log lr` by OLS (kappa, with run-level residual sd) when the study has >= 2 learning rates;
- the noise per checkpoint (residuals of those fits), scenario offsets at step 0, scenario speeds (sd of
  log of each scenario's rise over the run's) and scenario x checkpoint noise;
- the gradient-norm peak as a fraction of t50 (median over runs that crossed);
- the design: every run's id, learning rate and whether it is the control (the `real_design` generator).
The scenarios' behavior propensity sd (`sd_propensity`) is not estimated (it needs a mixed model): default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import curve_fit

from phaseflip.config import ForecastConfig
from phaseflip.data import IN_DISTRIBUTION
from phaseflip.forecast.methods import BOUNDED, fit_link
from phaseflip.run_folder import RunRecord
from phaseflip.stats.t50 import fit_t50

Study = list[RunRecord]  # run_folder.evaluated_runs of the study's run folders


@dataclass
class SimModel:
    metric: str = "p_preferred"
    bounded: bool = True  # the metric lives in (0, 1): simulated on the logit scale
    steps: list[int] = field(default_factory=lambda: [0, 2, 4, 6, 8, 10, 12, 16])
    max_steps: int = 16
    n_scenarios: int = 20
    n_near: list[int] = field(default_factory=lambda: [8])  # replies per scenario near the threshold
    n_far: list[int] = field(default_factory=lambda: [4])  # and away from it (adaptive sampling)
    link_intercept: float = -3.0  # rate = logistic(a + b x): crosses 0.5 at x = 1 (logit scale)
    link_slope: float = 3.0
    sd_propensity: float = 0.5
    x0: float = 0.0
    sd_offset: float = 0.3
    sd_speed: float = 0.3
    sd_noise: float = 0.05
    sd_step: float = 0.05
    exponent: float = 1.2
    lr_ref: float = 1e-3
    log_speed_ref: float = -1.2 * math.log(12)  # x(12) - x(0) = 1 at lr 1e-3
    speed_exponent: float = 1.0  # v ~ lr^kappa
    sd_log_speed: float = 0.3
    lr_range: tuple[float, float] = (3e-4, 6e-3)
    grad_peak_ratio: float = 0.75
    sd_grad: float = 0.1  # multiplicative (log-scale) noise of the simulated gradient norm
    # The study's runs (run_id, lr, control): the `real_design` generator's runs. Default: the default
    # grid of conf/train/ (lr 3e-3 and 6e-3, seeds 0 and 1, two extra runs at 3e-3, the control).
    design: list[tuple[str, float, bool]] = field(default_factory=lambda: [
        ("lr3e-03_nall_k0_s0", 3e-3, False), ("lr3e-03_nall_k0_s1", 3e-3, False),
        ("lr6e-03_nall_k0_s0", 6e-3, False), ("lr6e-03_nall_k0_s1", 6e-3, False),
        ("lr3e-03_n4_k2_s0", 3e-3, False), ("lr3e-03_n4_k0_s0", 3e-3, False),
        ("control-own-replies_lr3e-03_nall_k0_s0", 3e-3, True)])
    source: str = "defaults (no study)"
    fitted: list[str] = field(default_factory=list)


def _scale(x: np.ndarray, bounded: bool) -> np.ndarray:
    if not bounded:
        return x
    x = np.clip(x, 1e-3, 1 - 1e-3)
    return np.asarray(np.log(x / (1 - x)))


def _power(s: np.ndarray, log_v: float, p: float) -> np.ndarray:
    return np.asarray(np.exp(log_v) * np.power(s, p))


def fit_model(study: Study, cfg: ForecastConfig) -> SimModel:
    """The generative model, fitted to `study` where it can be (see the module docstring)."""
    metric = cfg.continuous_metric
    m = SimModel(metric=metric, bounded=metric in BOUNDED)
    if metric not in BOUNDED:
        m.link_intercept, m.link_slope, m.log_speed_ref = -1.0, 1.0, -1.2 * math.log(12)
    if not study:
        return m
    m.source, fitted = f"fitted to {len(study)} runs", m.fitted
    ids = [(rid, sc[sc.family == IN_DISTRIBUTION] if len(sc) else sc, met, log, info)
           for rid, met, sc, log, info in study]
    with_sc = [t for t in ids if len(t[1])]
    steps = sorted({int(s) for _, sc, met, _, _ in ids
                    for s in (sc.step if len(sc) else met[met.family == IN_DISTRIBUTION].step)})
    m.steps, m.max_steps = steps, max(steps)
    m.design = [(rid, float(info.get("lr") or m.lr_ref), bool(info.get("control", False))) for rid, *_, info in study]
    fitted += ["steps", "max_steps", "design"]
    if with_sc:
        all_sc = pd.concat([sc.assign(run=rid) for rid, sc, *_ in with_sc], ignore_index=True)
        all_sc = all_sc[all_sc.n > 0]
        m.n_scenarios = int(all_sc.scenario_id.nunique())
        pooled = all_sc.groupby(["run", "step"]).apply(lambda g: g.behavior_k.sum() / g.n.sum(), include_groups=False)
        near = all_sc.set_index(["run", "step"]).index.map(lambda i: 0.2 < pooled[i] < 0.8)
        m.n_far = sorted(all_sc.n[~np.asarray(near)].astype(int).tolist()) or m.n_far
        m.n_near = sorted(all_sc.n[np.asarray(near)].astype(int).tolist()) or m.n_far
        link = fit_link(_scale(all_sc[metric].to_numpy(float), m.bounded), all_sc.behavior_k.to_numpy(float),
                        all_sc.n.to_numpy(float))
        fitted += ["n_scenarios", "n_near", "n_far"]
    else:
        rows = [met[(met.family == IN_DISTRIBUTION) & met.metric.isin([metric, "behavior_rate"])]
                for _, _, met, _, _ in ids]
        wide = pd.concat(rows).pivot_table(index=["run_id", "step"], columns="metric", values="value").dropna()
        link = fit_link(_scale(wide[metric].to_numpy(float), m.bounded),
                        (wide.behavior_rate * 40).round().to_numpy(float), np.full(len(wide), 40.0))
    if link is not None and link.slope > 0:
        m.link_intercept, m.link_slope = link.intercept, link.slope
        fitted += ["link"]
    _fit_trajectories(m, ids, cfg)
    return m


def _run_curve(m: SimModel, sc: pd.DataFrame, met: pd.DataFrame) -> pd.DataFrame:
    """Per step: y (mean of the metric on the link scale) and, with scenarios, the per-scenario table."""
    if len(sc):
        return sc.assign(y=_scale(sc[m.metric].to_numpy(float), m.bounded)).dropna(subset=["y"])
    c = met[(met.family == IN_DISTRIBUTION) & (met.metric == m.metric)]
    return pd.DataFrame({"step": c.step, "scenario_id": "all", "y": _scale(c.value.to_numpy(float), m.bounded)})


def _fit_trajectories(m: SimModel, ids: list[Any], cfg: ForecastConfig) -> None:
    speeds, resid, offsets, scen_speeds, cell, peaks, starts = [], [], [], [], [], [], []
    for _rid, sc, met, log, info in ids:
        long = _run_curve(m, sc, met)
        if long.empty:
            continue
        y = long.groupby("step").y.mean()
        base = long[long.step == 0]
        if len(base) > 1:
            offsets.append(float(base.y.std()))
        if len(base):
            starts.append(float(base.y.mean()))
        if info.get("control") or len(y) < 4 or 0 not in y.index:
            continue
        s, rise = y.index.to_numpy(float), (y - y.loc[0]).to_numpy(float)
        if rise[-1] <= 0:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (log_v, p), _ = curve_fit(_power, s[s > 0], rise[s > 0], p0=[math.log(rise[-1] / s[-1]), 1.0],
                                          bounds=([-20, 0.5], [5, 3]))
        except (RuntimeError, ValueError):
            continue
        speeds.append((float(info["lr"]), log_v, p))
        resid += list(rise[s > 0] - _power(s[s > 0], log_v, p))
        if len(sc):  # each scenario's rise over the run's, and what an affine copy leaves
            wide = long.pivot_table(index="scenario_id", columns="step", values="y")
            wide = wide.sub(wide[0], axis=0)[y.index]
            ratio = (wide.iloc[:, -1] / rise[-1]).to_numpy(float)
            scen_speeds += list(np.log(np.clip(ratio[ratio > 0], 0.05, 20)))
            cell += list((wide.to_numpy(float) - ratio[:, None] * rise[None, :])[:, 1:-1].ravel())
        if len(log) and len(sc):
            counts = sc[sc.n > 0].rename(columns={"behavior_k": "k"})[["step", "scenario_id", "k", "n"]]
            t50 = fit_t50(counts, cfg.flip_threshold, n_bootstrap=2).t50
            if t50:
                peaks.append(float(log.step[log.grad_norm.idxmax()]) / t50)
    if offsets:
        m.sd_offset = float(np.median(offsets))
        m.fitted.append("sd_offset")
    if starts:  # the base model's level: the link is fitted on absolute levels, so the start must be the study's
        m.x0 = float(np.median(starts))
        m.fitted.append("x0")
    if scen_speeds:
        m.sd_speed, m.sd_noise = float(np.std(scen_speeds)), float(np.nanstd(cell)) if cell else m.sd_noise
        m.fitted += ["sd_speed", "sd_noise"]
    if peaks:
        m.grad_peak_ratio = float(np.median(peaks))
        m.fitted.append("grad_peak_ratio")
    if not speeds:
        return
    lrs, log_vs, ps = (np.array(v, dtype=float) for v in zip(*speeds, strict=True))
    m.exponent = float(np.median(ps))
    m.lr_ref = float(np.exp(np.median(np.log(lrs))))
    m.lr_range = (float(lrs.min() / 3), float(lrs.max() * 1.5))
    m.sd_step = max(0.01, float(np.std(resid))) if len(resid) > 2 else m.sd_step
    m.fitted += ["exponent", "lr_range", "sd_step"]
    if len(set(lrs)) >= 2:
        res = sm.OLS(log_vs, sm.add_constant(np.log(lrs / m.lr_ref))).fit()
        m.log_speed_ref, m.speed_exponent = float(res.params[0]), float(res.params[1])
        if res.df_resid >= 1:
            m.sd_log_speed = max(0.1, math.sqrt(float(res.scale)))
        m.fitted += ["log_speed_ref", "speed_exponent"]
    else:
        m.log_speed_ref = float(np.median(log_vs))
        m.fitted.append("log_speed_ref")
