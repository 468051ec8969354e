"""Forecast methods: a predictive distribution of a run's `t50` from its checkpoints up to an origin.

Every method takes a *view* of one run (a `RunData` cut at the forecast origin by `RunData.prefix`: its
checkpoints up to the origin, no t50, no level at its flip) and what the study knows from the finished
runs of *other configurations* (a `Context`), and returns a `Forecast`: draws of the crossing step (inf =
no crossing within `Context.horizon`), a single draw for a point method, or no forecast with the reason.
What the draws mean downstream (conditioned on "not crossed by the origin", censored at max_steps,
quantiles, probability of crossing within the budget) is `phaseflip.forecast.analysis`'s job, the same for every
method.

- `pooled_link` (two-step, the pre-registered primary): extrapolate the run's continuous metric (per-step
  mean over scenarios) with a line, a power law or a logistic in step, chosen by the error on the last
  prefix checkpoint when fitted without it; map it to the behavior rate with one link, a binomial GLM
  (statsmodels) of the per-step counts on the metric, fitted on every checkpoint of the other runs. t50 is
  where the extrapolated metric reaches the link's threshold level. Draws: bootstrap over the run's
  scenarios and the fit's residuals (the extrapolation) times a cluster bootstrap over the other runs.
- `per_scenario`: each scenario's metric is an affine copy of the pooled trajectory (fitted per scenario);
  a scenario is past its crossing when its metric reaches the scenario-level link's threshold (a GLM on
  the other runs' per-scenario counts); t50 is when the fraction of scenarios past it reaches the
  threshold. Same bootstrap.
- `lr_scaling`: t50 · lr^gamma = C over the other runs that crossed (OLS of log t50 on log lr,
  statsmodels), draws from its t predictive distribution; needs no checkpoint of the run. Only inside
  the range of learning rates those runs cover: no extrapolation.
- References: `linear` (a straight line through the metric, OLS with its parameter uncertainty, to the
  levels at which the other runs flipped) and `climatology` (the other configurations' t50, runs that
  did not cross as "beyond").
- Baselines: `grad_norm_peak` (the flip comes at the gradient-norm peak once it is behind us) and
  `change_point` (a significant change point of the metric): point forecasts.

    from phaseflip.forecast.methods import Context, RunData, METHODS
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from phaseflip.stats.change_points import penalised_change_point

# One success and one failure in all, spread over the rows in proportion to their replies: keeps the link
# finite when the other runs' checkpoints separate perfectly by the metric, with a negligible pull (a
# fixed count per row would pull every 4-reply scenario row 12% towards 0.5 and flatten the slope).
LINK_PRIOR_COUNT = 1.0
POWER_EXPONENTS = np.array([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])
BOUNDED = {"p_preferred", "forced_choice"}  # metrics in (0, 1): the logistic form applies to them
EPS = 1e-3
# Cluster-bootstrap refits of a link (each a GLM); the forecast's draws cycle through them. 40 resamples of
# the other runs carry the link's uncertainty at a fraction of the cost of one per forecast draw.
LINK_DRAWS = 40


def configuration_of(run_id: str) -> str:
    """A run's configuration: everything but the seed (`lr3e-03_nall_k0_s1` -> `lr3e-03_nall_k0`; the
    control is its own configuration). Replicates of one configuration share it."""
    return re.sub(r"_s\d+$", "", run_id)


@dataclass
class RunData:
    """One run's in-distribution data as the methods see it.

    scenarios: step, scenario_id, x (the continuous metric; NaN where a scenario has no reference pair),
    k, n. Empty when the run has no per-scenario table (older studies): `curve` then comes from
    metrics.csv. curve: step, x (mean over scenarios), k, n (sums). train_log: step, grad_norm.
    A finished run (another configuration's, in a `Context`) carries its t50 and level at the flip; the
    run being forecast is only ever seen through `prefix(origin)`, which has neither (`origin` set)."""

    run_id: str
    lr: float | None
    control: bool
    scenarios: pd.DataFrame
    curve: pd.DataFrame
    train_log: pd.DataFrame
    t50: float | None = None  # measured (study) or estimated (benchmark); used only as *another* run's
    level_at_flip: float | None = None
    configuration: str = ""  # "" = configuration_of(run_id)
    origin: float | None = None  # set on a view: nothing after this step

    def __post_init__(self) -> None:
        self.configuration = self.configuration or configuration_of(self.run_id)

    def prefix(self, origin: float) -> RunData:
        """What a researcher has at `origin`: the checkpoints (and logged steps) up to it, nothing of the
        run's outcome."""
        return RunData(self.run_id, self.lr, self.control, self.scenarios[self.scenarios.step <= origin],
                       self.curve[self.curve.step <= origin], self.train_log[self.train_log.step <= origin],
                       configuration=self.configuration, origin=float(origin))


@dataclass
class Forecast:
    """Draws of the crossing step (inf: no crossing within the horizon; one draw: a point forecast), or
    None with the reason: no forecast."""

    draws: np.ndarray | None
    reason: str = ""
    form: str | None = None


def none(reason: str, form: str | None = None) -> Forecast:
    return Forecast(None, reason=reason, form=form)


@dataclass
class Link:
    """rate = logistic(intercept + slope * x); `threshold_x` = where it equals the flip threshold."""

    intercept: float
    slope: float

    def level(self, threshold: float) -> float:
        return (math.log(threshold / (1 - threshold)) - self.intercept) / self.slope if self.slope > 0 else math.inf


def fit_link(x: np.ndarray, k: np.ndarray, n: np.ndarray) -> Link | None:
    """Binomial GLM of k of n on x (statsmodels); None when there is nothing to fit."""
    keep = np.isfinite(x) & (n > 0)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0:
        return None
    prior = LINK_PRIOR_COUNT * n[keep] / n[keep].sum()
    y = np.column_stack([k[keep] + prior, n[keep] - k[keep] + prior])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.GLM(y, sm.add_constant(x[keep], has_constant="add"), family=sm.families.Binomial()).fit()
    return Link(float(res.params[0]), float(res.params[1]))


@dataclass
class Context:
    """What the study knows besides the run being forecast: built from the *other* runs only."""

    others: list[RunData]
    threshold: float
    interval: float
    n_bootstrap: int
    max_steps: int
    metric: str
    horizon: float  # crossings beyond this step are "not within the horizon"
    seed: int = 0
    _levels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _noise: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False)

    def trajectory_noise(self, family: str) -> tuple[float, int]:
        """(sum of squared residuals, degrees of freedom) of the form family's fit to the other runs'
        metric before their t50: how far checkpoints scatter around such a curve, known before this run's
        prefix is long enough to show it (two or three checkpoints leave no residual to resample)."""
        if family not in self._noise:
            ss, dof = 0.0, 0
            for r in self.others:
                c = r.curve[r.curve.step <= (r.t50 if r.t50 is not None else np.inf)]
                if r.control or len(c) < 4:
                    continue
                steps, x = c.step.to_numpy(float), c.x.to_numpy(float)
                form = next((f for f in forms(self.metric, steps, x) if f.name.rstrip("0123456789.") == family), None)
                if form is None:
                    continue
                ss += float(((form.h(x) - form.h(form.predict(form.fit(steps, x), steps)[0])) ** 2).sum())
                dof += len(x) - 2
            self._noise[family] = (ss, dof)
        return self._noise[family]

    def link_levels(self, kind: str) -> np.ndarray:
        """Threshold levels of the metric: [point, bootstrap draws...] of the pooled ('curve') or the
        per-scenario ('scenarios') link; the draws resample the other runs (a cluster bootstrap)."""
        if kind not in self._levels:
            self._levels[kind] = self._fit_levels(kind)
        return self._levels[kind]

    def _fit_levels(self, kind: str) -> np.ndarray:
        tables = [getattr(r, kind)[["x", "k", "n"]].to_numpy(float) for r in self.others if len(getattr(r, kind))]
        if not tables:
            return np.array([])
        rng = np.random.default_rng(self.seed + 1)
        draws = min(self.n_bootstrap, LINK_DRAWS)
        picks = [np.arange(len(tables))] + [rng.integers(0, len(tables), len(tables)) for _ in range(draws)]
        out = np.full(len(picks), math.inf)
        for b, pick in enumerate(picks):
            t = np.concatenate([tables[i] for i in pick])
            link = fit_link(t[:, 0], t[:, 1], t[:, 2])
            out[b] = link.level(self.threshold) if link is not None else math.inf
        return out


# ---- extrapolation of the continuous metric -------------------------------------------------------------

def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, EPS, 1 - EPS)
    return np.log(x / (1 - x))


@dataclass
class Form:
    """A curve linear in two coefficients after fixed transforms: h(x) = a + b * g(step)."""

    name: str  # family name, plus the exponent for a power law ("power1.5")
    g: Callable[[np.ndarray], np.ndarray]
    h: Callable[[np.ndarray], np.ndarray]
    h_inv: Callable[[np.ndarray], np.ndarray]

    def fit(self, steps: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Least-squares (a, b); x may be (B, T) for B series at once."""
        design = np.column_stack([np.ones_like(steps), self.g(steps)])
        coef, *_ = np.linalg.lstsq(design, np.atleast_2d(self.h(x)).T, rcond=None)
        return np.asarray(coef.T)  # (B, 2)

    def predict(self, coef: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return np.asarray(self.h_inv(coef[:, :1] + coef[:, 1:] * self.g(steps)[None, :]))


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _power_of(c: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.asarray(np.power(s, c))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


def forms(metric: str, steps: np.ndarray, x: np.ndarray) -> list[Form]:
    """Candidate forms: line; power law a + b * step^c (c profiled over a grid by least squares);
    logistic in step (a line in logit space) for metrics bounded in (0, 1)."""
    out = [Form("line", _identity, _identity, _identity)]
    if len(steps) >= 3:
        sse = []
        for c in POWER_EXPONENTS:
            f = Form("power", _power_of(float(c)), _identity, _identity)
            sse.append(float(((f.predict(f.fit(steps, x), steps)[0] - x) ** 2).sum()))
        best = float(POWER_EXPONENTS[int(np.argmin(sse))])
        out.append(Form(f"power{best:g}", _power_of(best), _identity, _identity))
    if metric in BOUNDED:
        out.append(Form("logistic", _identity, _logit, _sigmoid))
    return out


def choose_form(metric: str, steps: np.ndarray, x: np.ndarray) -> Form:
    """The form whose fit without the last checkpoint predicts it best (held-out error); with two
    checkpoints, the line."""
    if len(steps) < 3:
        return forms(metric, steps, x)[0]
    held = [(abs(f.predict(f.fit(steps[:-1], x[:-1]), steps[-1:])[0, 0] - x[-1]), i, f)
            for i, f in enumerate(forms(metric, steps[:-1], x[:-1]))]
    family = min(held, key=lambda t: (t[0], t[1]))[2].name.rstrip("0123456789.")
    # refit on every checkpoint: a power law's exponent is profiled again
    return next(f for f in forms(metric, steps, x) if f.name.rstrip("0123456789.") == family)


def first_crossing(curves: np.ndarray, levels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per row, the first grid step where the curve reaches its level (inf: never on the grid)."""
    hit = curves >= levels[:, None]
    idx = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), grid[idx], math.inf)


def _grid(origin: float, ctx: Context) -> np.ndarray:
    """Where crossings are looked for: from the origin (the run has not crossed before it: observed) to
    the horizon."""
    return np.linspace(origin, ctx.horizon, int(max(50, (ctx.horizon - origin) * 10)))


def _trajectory_draws(run: RunData, ctx: Context, rng: np.random.Generator) -> tuple[Form, np.ndarray, np.ndarray]:
    """The chosen form and (B + 1, T) per-step metric series: the observed one, then bootstrap series
    (scenarios resampled, plus noise around the fit with the sd pooled over this prefix's residuals and
    the other runs': the extrapolation's uncertainty)."""
    steps, x = run.curve.step.to_numpy(float), run.curve.x.to_numpy(float)
    form = choose_form(ctx.metric, steps, x)
    sc = run.scenarios.dropna(subset=["x"])
    if len(sc):
        wide = sc.pivot_table(index="scenario_id", columns="step", values="x").reindex(columns=steps)
        table = wide.to_numpy(float)
        rows = rng.integers(0, len(table), (ctx.n_bootstrap, len(table)))
        series = np.nanmean(table[rows], axis=1)  # (B, T)
        series = np.where(np.isfinite(series), series, x[None, :])
    else:
        series = np.repeat(x[None, :], ctx.n_bootstrap, axis=0)
    coef = form.fit(steps, x)
    own_ss = float(((form.h(x) - form.h(form.predict(coef, steps)[0])) ** 2).sum())
    other_ss, other_dof = ctx.trajectory_noise(form.name.rstrip("0123456789."))
    dof = max(0, len(x) - 2) + other_dof
    sd = math.sqrt((own_ss + other_ss) / dof) if dof else 0.0  # pooled: this prefix and the other runs
    noise = rng.normal(0, sd, size=series.shape)
    series = form.h_inv(form.h(series) + noise)
    return form, steps, np.vstack([x[None, :], series])


def pooled_link(run: RunData, origin: float, ctx: Context) -> Forecast:
    """Two-step: extrapolate the pooled metric, read t50 where it reaches the link's threshold level."""
    if len(run.curve) < 2:
        return none("fewer than 2 checkpoints")
    levels = ctx.link_levels("curve")
    if not len(levels) or not math.isfinite(levels[0]):
        return none("no link: the other runs do not relate the metric to the rate")
    rng = np.random.default_rng(ctx.seed)
    form, steps, series = _trajectory_draws(run, ctx, rng)
    grid = _grid(origin, ctx)
    curves = form.predict(form.fit(steps, series), grid)
    lv = np.concatenate([levels[:1], rng.choice(levels[1:], len(series) - 1)]) if len(levels) > 1 \
        else np.repeat(levels, len(series))
    cross = first_crossing(curves, lv, grid)
    return Forecast(cross[1:], form=form.name)  # cross[0]: the observed series, not a draw


def per_scenario(run: RunData, origin: float, ctx: Context) -> Forecast:
    """When the fraction of scenarios whose own extrapolated metric passed the per-scenario link's
    threshold level reaches the flip threshold."""
    sc = run.scenarios.dropna(subset=["x"])
    if sc.empty:
        return none("no per-scenario metric")
    if len(run.curve) < 2:
        return none("fewer than 2 checkpoints")
    levels = ctx.link_levels("scenarios")
    if not len(levels) or not math.isfinite(levels[0]):
        return none("no per-scenario link")
    rng = np.random.default_rng(ctx.seed + 2)
    form, steps, series = _trajectory_draws(run, ctx, rng)  # the pooled trajectory and its bootstrap
    grid = _grid(origin, ctx)
    pooled_fit = form.predict(form.fit(steps, series[0]), steps)[0]
    pooled_grid = form.predict(form.fit(steps, series), grid)  # (B + 1, G)
    wide = sc.pivot_table(index="scenario_id", columns="step", values="x").reindex(columns=steps)
    table = wide.to_numpy(float)
    table = np.where(np.isfinite(table), table, pooled_fit[None, :])
    # each scenario: x_j(step) = a_j + b_j * pooled(step), least squares
    design = np.column_stack([np.ones_like(pooled_fit), pooled_fit])
    coef, *_ = np.linalg.lstsq(design, table.T, rcond=None)
    resid = table - (coef[0][:, None] + coef[1][:, None] * pooled_fit[None, :])
    spread = float(np.sqrt((resid**2).sum() / max(1, resid.size - 2 * len(table))))
    picks = [np.arange(len(table))] + [rng.integers(0, len(table), len(table)) for _ in range(ctx.n_bootstrap)]
    lv = np.concatenate([levels[:1], rng.choice(levels[1:], ctx.n_bootstrap)]) if len(levels) > 1 \
        else np.repeat(levels, ctx.n_bootstrap + 1)
    cross = np.empty(len(picks))
    for b, pick in enumerate(picks):
        shift = 0.0 if b == 0 else rng.normal(0, spread, (len(pick), 1))  # a scenario's own noise
        scen = coef[0][pick, None] + coef[1][pick, None] * pooled_grid[b][None, :] + shift
        frac = (scen >= lv[b]).mean(axis=0)
        cross[b] = first_crossing(frac[None, :], np.array([ctx.threshold]), grid)[0]
    return Forecast(cross[1:], form=form.name)  # cross[0]: the observed series, not a draw


@dataclass
class LrScaling:
    """log t50 = log C - gamma * log lr over the runs that crossed (OLS)."""

    gamma: float
    gamma_lo: float
    gamma_hi: float
    n_runs: int
    lr_range: tuple[float, float]  # the learning rates of the runs it was fitted on
    result: Any = field(repr=False)

    def predict(self, lr: float, interval: float, n_draws: int = 0, seed: int = 0) -> tuple[float, float, float,
                                                                                           np.ndarray]:
        """Point, prediction interval and draws (from the t predictive distribution) of t50 at `lr`."""
        pred = self.result.get_prediction(np.array([[1.0, math.log(lr)]]))
        frame = pred.summary_frame(alpha=1 - interval)
        # on the log scale, capped (exp(50) steps is "never" for any study) so that exp cannot overflow
        mean, lo, hi = (min(50.0, float(frame[c].iloc[0])) for c in ("mean", "obs_ci_lower", "obs_ci_upper"))
        se = math.sqrt(float(pred.se_mean[0]) ** 2 + float(self.result.scale))
        draws = mean + se * np.random.default_rng(seed).standard_t(self.result.df_resid, n_draws)
        return math.exp(mean), math.exp(lo), math.exp(hi), np.exp(np.minimum(draws, 50.0))


def lr_scaling_fit(runs: list[RunData], confidence: float = 0.95) -> LrScaling | None:
    """Fit over runs with a t50 and a learning rate (controls excluded); None below 3 runs or 2 rates."""
    pts = [(r.lr, r.t50) for r in runs if not r.control and r.t50 and r.lr and r.t50 > 0]
    if len(pts) < 3 or len({lr for lr, _ in pts}) < 2:
        return None
    lrs, t50 = np.array(pts, dtype=float).T
    res = sm.OLS(np.log(t50), sm.add_constant(np.log(lrs))).fit()
    lo, hi = res.conf_int(alpha=1 - confidence)[1]
    return LrScaling(-float(res.params[1]), -float(hi), -float(lo), len(pts), (float(lrs.min()), float(lrs.max())), res)


def lr_scaling(run: RunData, origin: float, ctx: Context) -> Forecast:
    """t50 from the other configurations' learning-rate scaling; only inside the learning rates they cover."""
    fit = lr_scaling_fit(ctx.others)
    if fit is None or not run.lr:
        return none("fewer than 3 other crossed runs at >= 2 learning rates")
    lo, hi = fit.lr_range
    if not lo <= run.lr <= hi:
        return none(f"lr {run.lr:g} outside the other runs' learning rates [{lo:g}, {hi:g}]: no extrapolation")
    *_, draws = fit.predict(run.lr, ctx.interval, ctx.n_bootstrap, ctx.seed)
    return Forecast(np.where(draws > ctx.horizon, math.inf, draws), form=f"gamma={fit.gamma:.2f}")


def flip_levels(others: list[RunData]) -> np.ndarray:
    return np.array([r.level_at_flip for r in others if r.level_at_flip is not None and not r.control], float)


def linear(run: RunData, origin: float, ctx: Context) -> Forecast:
    """Reference: a straight line through the metric (OLS; draws of its intercept and slope from their
    estimated covariance), extrapolated to a level at which another run flipped (drawn from them)."""
    levels = flip_levels(ctx.others)
    if len(run.curve) < 2 or not len(levels):
        return none("fewer than 2 checkpoints or no other run flipped")
    steps, x = run.curve.step.to_numpy(float), run.curve.x.to_numpy(float)
    res = sm.OLS(x, sm.add_constant(steps, has_constant="add")).fit()
    rng = np.random.default_rng(ctx.seed + 3)
    cov = np.asarray(res.cov_params()) if res.df_resid > 0 else np.zeros((2, 2))
    cov = np.nan_to_num(cov)
    coef = rng.multivariate_normal(np.asarray(res.params, float), cov, ctx.n_bootstrap, method="svd")
    level = rng.choice(levels, ctx.n_bootstrap)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (level - coef[:, 0]) / coef[:, 1]
    rising = coef[:, 1] > 0
    # a falling line never reaches the level ahead; one already past it crosses now
    cross = np.where(rising, np.maximum(cross, origin), math.inf)
    return Forecast(np.where(cross > ctx.horizon, math.inf, cross), form="line")


def climatology(run: RunData, origin: float, ctx: Context) -> Forecast:
    """Reference: the other configurations' t50 (those that did not cross: beyond the horizon), of runs
    of the same kind (controls for a control) when there are any."""
    same = [r for r in ctx.others if r.control == run.control] or ctx.others
    if not same:
        return none("no other configuration")
    return Forecast(np.array([r.t50 if r.t50 is not None else math.inf for r in same], float), form="others' t50")


def grad_norm_peak(run: RunData, origin: float, ctx: Context) -> Forecast:
    """Baseline: the flip comes at the gradient-norm peak, once the peak is behind us (a point)."""
    log = run.train_log
    if len(log) < 3:
        return none("fewer than 3 logged steps")
    peak = float(log.step.iloc[int(np.argmax(log.grad_norm.to_numpy(float)))])
    if peak >= float(log.step.max()):
        return none("gradient norm still rising")
    if peak <= float(log.step.min()):
        return none("gradient norm only falling: no peak")
    return Forecast(np.array([peak]))


def change_point_forecast(run: RunData, origin: float, ctx: Context) -> Forecast:
    """Baseline: a significant change point of the metric in the prefix is the flip (a point)."""
    cp = penalised_change_point(run.curve.step.to_numpy(float), run.curve.x.to_numpy(float))
    return none("no change point in the prefix") if cp is None else Forecast(np.array([float(cp)]))


METHODS: dict[str, Callable[[RunData, float, Context], Forecast]] = {
    "pooled_link": pooled_link, "per_scenario": per_scenario, "lr_scaling": lr_scaling,
    "linear": linear, "climatology": climatology, "grad_norm_peak": grad_norm_peak,
    "change_point": change_point_forecast,
}
REFERENCES = ("linear", "climatology")  # the primary's skill is measured against both
