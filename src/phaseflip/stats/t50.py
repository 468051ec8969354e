"""The transition as an estimate with an interval (docs/design.md §7): `t50` of one run from its behavior
counts.

Per run, the in-distribution behavior counts (k of n sampled replies per scenario and checkpoint) are fitted
against step with a binomial GLM (statsmodels, logit link), once linear in step and once in log(1 + step);
the form with the higher likelihood wins. Real behaviors have floors (a base rate, judge false positives)
and ceilings (scenarios that never flip), which a logit-linear curve cannot bend to, so a floor/ceiling
curve on the same form, floor + (ceiling - floor) * expit(a + b x), is fitted beside it by binomial
likelihood (scipy SLSQP, analytic gradient) and replaces it where the AIC says so. `t50` is the step
where the chosen curve crosses the pre-registered threshold; a curve whose ceiling stays below the threshold
"levels off" below it: the run does not reach it, it is not a late crossing. Its interval is a two-stage
bootstrap that respects how the data were drawn: scenarios are resampled with replacement (a run's scenarios
are a sample of the behavior's), then each scenario's replies are redrawn binomially at its observed rate
(the sampling noise). A run whose fitted rate has not reached the threshold by its last checkpoint is right-
censored: `t50 > last step`, never "no flip".

Beside it, the "confirmed flip": the first checkpoint whose rate interval (clustered, see
`stats.intervals.clustered_interval`) lies wholly above the threshold.

    from phaseflip.stats.t50 import fit_t50
    fit = fit_t50(counts, threshold=0.5)   # counts: step, scenario_id, k, n
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import minimize
from scipy.special import expit

# Forms of the linear predictor: name -> (transform of step, inverse).
FORMS = {
    "step": (lambda s: np.asarray(s, dtype=float), lambda x: x),
    "log_step": (lambda s: np.log1p(np.asarray(s, dtype=float)), lambda x: math.expm1(x) if x < 50 else math.inf),
}
# Half a success and half a failure per checkpoint (a Jeffreys-style pseudo-count): keeps the fit finite
# when the flip is so sharp that the checkpoints separate perfectly (all 0 before, all 1 after), where the
# maximum-likelihood slope is infinite. Its pull on a checkpoint of n samples is 0.5 / n.
CHECKPOINT_PSEUDO_COUNT = 0.5


@dataclass
class T50:
    t50: float | None  # None when censored
    lo: float | None  # 95% bootstrap interval; hi is inf when most resamples do not cross in range
    hi: float | None
    # "" (crossed in range), "right" (t50 > last step), "left" (already above at the first), "levels_off"
    # (the fitted ceiling is below the threshold: the run does not reach it)
    censored: str
    form: str | None
    slope: float | None  # on the form's scale (logit per step or per log(1 + step))
    last_step: int
    n_bootstrap: int
    # The checkpoints around the observed crossing: the last whose pooled rate is below the threshold before
    # the first at or above it (None: no observed crossing), whatever the fitted curve says.
    bracket: tuple[int, int] | None = None
    shape: str = "logistic"  # or "floor_ceiling" (see the module's docstring)
    floor: float = 0.0
    ceiling: float = 1.0

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        lo_step, hi_step = self.bracket if self.bracket is not None else (None, None)
        return {"t50": row["t50"], "t50_lo": row["lo"], "t50_hi": row["hi"], "t50_censored": row["censored"],
                "t50_form": row["form"], "t50_slope": row["slope"], "t50_shape": row["shape"],
                "t50_floor": row["floor"], "t50_ceiling": row["ceiling"], "bracket_below": lo_step,
                "bracket_above": hi_step}

    def describe(self, digits: int = 1) -> str:
        """'12.3 [10.9, 13.8]', 't50 > 16', 'levels off at 0.42 (below the threshold)' or 't50 before the
        first checkpoint'."""
        if self.censored == "levels_off":
            return f"levels off at {self.ceiling:.2f} (does not reach the threshold)"
        if self.censored == "right":
            return f"t50 > {self.last_step}"
        if self.censored == "left":
            return "t50 before the first checkpoint"
        assert self.t50 is not None and self.lo is not None and self.hi is not None
        hi = "inf" if not math.isfinite(self.hi) else f"{self.hi:.{digits}f}"
        return f"{self.t50:.{digits}f} [{self.lo:.{digits}f}, {hi}]"


def _fit(steps: np.ndarray, k: np.ndarray, n: np.ndarray, form: str) -> tuple[float, float, float]:
    """(intercept, slope, log-likelihood) of a binomial GLM of k/n on the form's transform of step."""
    x = sm.add_constant(FORMS[form][0](steps), has_constant="add")
    y = np.column_stack([k + CHECKPOINT_PSEUDO_COUNT, n - k + CHECKPOINT_PSEUDO_COUNT])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-separation warnings: the pseudo-count keeps the fit finite
        res = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    intercept, slope = (float(v) for v in res.params)
    return intercept, slope, float(res.llf)


def _crossing(intercept: float, slope: float, form: str, threshold: float, floor: float = 0.0,
              ceiling: float = 1.0) -> float:
    """Step where the rate floor + (ceiling - floor) * expit(intercept + slope * x) reaches the threshold;
    inf when it never rises to it (a slope <= 0, or a ceiling at or below the threshold)."""
    if slope <= 0 or ceiling <= threshold:
        return math.inf
    if floor >= threshold:
        return -math.inf
    level = (threshold - floor) / (ceiling - floor)
    x = (math.log(level / (1 - level)) - intercept) / slope
    return float(FORMS[form][1](x))


# The floor/ceiling curve: rate = floor + (1 - floor) * reach * expit(a + b * x), x the form's transform of
# step, floor and reach in [0, 1] (so ceiling = floor + (1 - floor) * reach <= 1), b >= 0 (a rise). Fitted by
# binomial likelihood (the same pseudo-counts) with its analytic gradient; chosen over the two-parameter
# forms by AIC (two parameters more).
_EPS = 1e-9
MAX_SLOPE_SPAN = 40.0  # b * (x range) at most: a step sharper than that between checkpoints is not resolved


def _nll_floor_ceiling(theta: np.ndarray, x: np.ndarray, y1: np.ndarray, y0: np.ndarray
                       ) -> tuple[float, np.ndarray]:
    a, b, floor, reach = theta
    s = expit(a + b * x)
    p = np.clip(floor + (1 - floor) * reach * s, _EPS, 1 - _EPS)
    dp = -(y1 / p - y0 / (1 - p))  # d nll / d p
    dz = dp * (1 - floor) * reach * s * (1 - s)
    grad = np.array([dz.sum(), (dz * x).sum(), (dp * (1 - reach * s)).sum(), (dp * (1 - floor) * s).sum()])
    return float(-(y1 * np.log(p) + y0 * np.log(1 - p)).sum()), grad


def _fit_floor_ceiling(steps: np.ndarray, k: np.ndarray, n: np.ndarray, form: str, intercept: float,
                       slope: float, warm: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(a, b, floor, reach) and log-likelihood of the floor/ceiling curve. Started from `warm` (a bootstrap
    resample starts from its run's own fit) or else from two points: the two-parameter fit (floor 0,
    ceiling 1) and the observed lowest and highest rates."""
    x = FORMS[form][0](steps)
    y1, y0 = k + CHECKPOINT_PSEUDO_COUNT, n - k + CHECKPOINT_PSEUDO_COUNT
    span = max(float(x.max() - x.min()), 1e-6)
    bounds = [(-1e6, 1e6), (0.0, MAX_SLOPE_SPAN / span), (0.0, 1.0 - 1e-6), (1e-6, 1.0)]
    if warm is not None:
        starts = [warm]
    else:
        rate = y1 / (y1 + y0)
        lo, hi = float(rate.min()), float(rate.max())
        mid = float(x[np.argmin(np.abs(rate - (lo + hi) / 2))])
        starts = [np.array([intercept, max(slope, 0.0), 0.0, 1.0]),
                  np.array([-4.0 / span * mid, 4.0 / span, lo, min(max((hi - lo) / (1 - lo), 1e-3), 1.0)])]
    best: tuple[np.ndarray, float] | None = None
    for start in starts:
        start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
        # SLSQP: on these 4-parameter, 5-10-point problems it converges to the same optimum as L-BFGS-B in
        # about half the time (the bootstrap fits it hundreds of times per run)
        res = minimize(_nll_floor_ceiling, start, args=(x, y1, y0), jac=True, method="SLSQP", bounds=bounds)
        if np.isfinite(res.fun) and (best is None or -res.fun > best[1]):
            best = (np.asarray(res.x, float), float(-res.fun))
    if best is None:  # no start converged to a finite likelihood: the two-parameter curve stands
        return np.array([intercept, max(slope, 0.0), 0.0, 1.0]), -math.inf
    return best


@dataclass
class Curve:
    """The rate-vs-step curve chosen for a run: floor + (ceiling - floor) * expit(intercept + slope * x).
    `bounded_fit`: the floor/ceiling curve's (a, b, floor, reach) on `form`, chosen or not (a warm start)."""
    form: str
    intercept: float
    slope: float
    floor: float = 0.0
    ceiling: float = 1.0
    bounded_fit: np.ndarray | None = None

    @property
    def shape(self) -> str:
        return "floor_ceiling" if (self.floor, self.ceiling) != (0.0, 1.0) else "logistic"

    def crossing(self, threshold: float) -> float:
        return _crossing(self.intercept, self.slope, self.form, threshold, self.floor, self.ceiling)


def best_curve(steps: np.ndarray, k: np.ndarray, n: np.ndarray, floor_ceiling: bool = True,
               warm: Curve | None = None) -> Curve:
    """The two-parameter form with the higher likelihood; with `floor_ceiling`, replaced by the floor/ceiling
    curve on the same form where that lowers the AIC (needs >= 5 checkpoints: 4 parameters). `warm`: a
    fit of the same run to start the floor/ceiling curve from (the bootstrap's resamples)."""
    form, intercept, slope = best_form(steps, k, n)
    curve = Curve(form, intercept, slope)
    if not floor_ceiling or len(steps) < 5:
        return curve
    x = FORMS[form][0](steps)
    y1, y0 = k + CHECKPOINT_PSEUDO_COUNT, n - k + CHECKPOINT_PSEUDO_COUNT
    llf2 = -_nll_floor_ceiling(np.array([intercept, slope, 0.0, 1.0]), x, y1, y0)[0]  # same scale as llf4
    start = warm.bounded_fit if warm is not None and warm.form == form else None
    theta, llf4 = _fit_floor_ceiling(steps, k, n, form, intercept, slope, start)
    curve.bounded_fit = theta
    if 2 * 4 - 2 * llf4 < 2 * 2 - 2 * llf2:
        a, b, floor, reach = (float(v) for v in theta)
        return Curve(form, a, b, floor, floor + (1 - floor) * reach, theta)
    return curve


def _per_step(counts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    agg = counts.groupby("step")[["k", "n"]].sum().sort_index()
    agg = agg[agg.n > 0]
    return agg.index.to_numpy(float), agg.k.to_numpy(float), agg.n.to_numpy(float)


def best_form(steps: np.ndarray, k: np.ndarray, n: np.ndarray) -> tuple[str, float, float]:
    """The form with the higher likelihood (same number of parameters, so no penalty is needed)."""
    fits = {form: _fit(steps, k, n, form) for form in FORMS}
    form = max(fits, key=lambda f: fits[f][2])
    return form, fits[form][0], fits[form][1]


def observed_bracket(steps: np.ndarray, k: np.ndarray, n: np.ndarray, threshold: float) -> tuple[int, int] | None:
    """(last checkpoint below the threshold, first at or above it after it) of the pooled observed rates."""
    rate = k / n
    above = np.flatnonzero(rate >= threshold)
    for i in above:
        if i > 0 and rate[i - 1] < threshold:
            return int(steps[i - 1]), int(steps[i])
    return None


def fit_t50(counts: pd.DataFrame, threshold: float = 0.5, n_bootstrap: int = 200, confidence: float = 0.95,
            seed: int = 0, floor_ceiling: bool = True) -> T50:
    """t50 of one run with a bootstrap interval. `counts`: step, scenario_id, k, n (one family).
    `floor_ceiling`: let the floor/ceiling curve compete (the default; False: the logit-linear forms only)."""
    steps, k, n = _per_step(counts)
    if len(steps) < 2:
        raise ValueError(f"fit_t50 needs counts at >= 2 steps, got {len(steps)}")
    last, first = int(steps.max()), float(steps.min())
    curve = best_curve(steps, k, n, floor_ceiling)
    form, slope = curve.form, curve.slope
    point = curve.crossing(threshold)
    bracket = observed_bracket(steps, k, n, threshold)
    shape = (curve.shape, curve.floor, curve.ceiling)
    if point > last:
        censored = "levels_off" if curve.ceiling <= threshold else "right"
        return T50(None, None, None, censored, form, slope, last, n_bootstrap, bracket, *shape)
    if point < first and k[0] / n[0] >= threshold:
        return T50(None, None, None, "left", form, slope, last, n_bootstrap, bracket, *shape)
    boots = _bootstrap(counts, threshold, n_bootstrap, seed, floor_ceiling, curve)
    alpha = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.quantile(boots, [alpha, 1 - alpha]))
    # A resample that does not cross by the last checkpoint is censored, not a number: an upper bound
    # beyond the last step is open (inf).
    hi = hi if hi <= last else math.inf
    # a degenerate bootstrap (a step sharper than the checkpoints resolve: every resample at the bound) can
    # put both percentiles a rounding error off the point; the interval holds its own estimate
    lo, hi = min(lo, point), max(hi, point)
    return T50(point, max(lo, 0.0), hi, "", form, slope, last, n_bootstrap, bracket, *shape)


def scenario_tables(counts: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """(scenario ids, k and n as scenario x step arrays, steps) of a run's counts."""
    table = counts.pivot_table(index="scenario_id", columns="step", values=["k", "n"], aggfunc="sum", fill_value=0)
    return table.index, table["k"].to_numpy(float), table["n"].to_numpy(float), table["k"].columns.to_numpy(float)


def resampled_t50(k_table: np.ndarray, n_table: np.ndarray, steps: np.ndarray, rows: np.ndarray,
                  rng: np.random.Generator, threshold: float, floor_ceiling: bool = True,
                  warm: Curve | None = None) -> float:
    """t50 of one two-stage resample: the scenarios `rows` (drawn with replacement), then each one's replies
    redrawn binomially at its observed rate (inf when the resample does not cross)."""
    rate = np.divide(k_table[rows], n_table[rows], out=np.zeros_like(k_table[rows]), where=n_table[rows] > 0)
    k_b = rng.binomial(n_table[rows].astype(int), rate).sum(axis=0).astype(float)
    n_b = n_table[rows].sum(axis=0)
    keep = n_b > 0
    if keep.sum() < 2:
        return math.nan
    return best_curve(steps[keep], k_b[keep], n_b[keep], floor_ceiling, warm).crossing(threshold)


def _bootstrap(counts: pd.DataFrame, threshold: float, n_bootstrap: int, seed: int, floor_ceiling: bool = True,
               warm: Curve | None = None) -> np.ndarray:
    """t50 of each two-stage resample (scenarios with replacement, then each scenario's replies)."""
    rng = np.random.default_rng(seed)
    _, k_table, n_table, steps = scenario_tables(counts)
    return np.array([resampled_t50(k_table, n_table, steps, rng.integers(0, len(k_table), len(k_table)), rng,
                                   threshold, floor_ceiling, warm) for _ in range(n_bootstrap)])


def confirmed_flip(rates: pd.DataFrame, threshold: float) -> int | None:
    """First step whose rate interval lies wholly above the threshold (rates: step, lo)."""
    above = rates[rates.lo > threshold].sort_values("step")
    return int(above.step.iloc[0]) if len(above) else None
