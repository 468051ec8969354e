"""The transition as an estimate with an interval (docs/design.md §7): `t50` of one run from its behavior counts.

Per run, the in-distribution behavior counts (k of n sampled replies per scenario and checkpoint) are
fitted against step with a binomial GLM (statsmodels, logit link), once linear in step and once in
log(1 + step); the form with the higher likelihood wins. `t50` is the step where the fitted rate
crosses the pre-registered threshold. Its interval is a two-stage bootstrap that respects how the
data were drawn: scenarios are resampled with replacement (a run's scenarios are a sample of the
behavior's), then each scenario's replies are redrawn binomially at its observed rate (the sampling
noise). A run whose fitted rate has not reached the threshold by its last checkpoint is right-censored:
`t50 > last step`, never "no flip".

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
    censored: str  # "" (crossed in range), "right" (t50 > last step), "left" (already above at the first)
    form: str | None
    slope: float | None  # on the form's scale (logit per step or per log(1 + step))
    last_step: int
    n_bootstrap: int
    # The checkpoints around the observed crossing: the last whose pooled rate is below the threshold before
    # the first at or above it (None: no observed crossing), whatever the fitted curve says.
    bracket: tuple[int, int] | None = None

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        lo_step, hi_step = self.bracket if self.bracket is not None else (None, None)
        return {"t50": row["t50"], "t50_lo": row["lo"], "t50_hi": row["hi"], "t50_censored": row["censored"],
                "t50_form": row["form"], "t50_slope": row["slope"], "bracket_below": lo_step,
                "bracket_above": hi_step}

    def describe(self, digits: int = 1) -> str:
        """'12.3 [10.9, 13.8]', 't50 > 16' or 't50 < 2'."""
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


def _crossing(intercept: float, slope: float, form: str, threshold: float) -> float:
    """Step where logit(rate) = logit(threshold); inf when the rate never rises to it."""
    if slope <= 0:
        return math.inf
    x = (math.log(threshold / (1 - threshold)) - intercept) / slope
    return float(FORMS[form][1](x))


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
            seed: int = 0) -> T50:
    """t50 of one run with a bootstrap interval. `counts`: step, scenario_id, k, n (one family)."""
    steps, k, n = _per_step(counts)
    if len(steps) < 2:
        raise ValueError(f"fit_t50 needs counts at >= 2 steps, got {len(steps)}")
    last, first = int(steps.max()), float(steps.min())
    form, intercept, slope = best_form(steps, k, n)
    point = _crossing(intercept, slope, form, threshold)
    bracket = observed_bracket(steps, k, n, threshold)
    if point > last:
        return T50(None, None, None, "right", form, slope, last, n_bootstrap, bracket)
    if point < first and k[0] / n[0] >= threshold:
        return T50(None, None, None, "left", form, slope, last, n_bootstrap, bracket)
    boots = _bootstrap(counts, threshold, n_bootstrap, seed)
    alpha = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.quantile(boots, [alpha, 1 - alpha]))
    # A resample that does not cross by the last checkpoint is censored, not a number: an upper bound
    # beyond the last step is open (inf).
    hi = hi if hi <= last else math.inf
    return T50(point, max(lo, 0.0), hi, "", form, slope, last, n_bootstrap, bracket)


def scenario_tables(counts: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """(scenario ids, k and n as scenario x step arrays, steps) of a run's counts."""
    table = counts.pivot_table(index="scenario_id", columns="step", values=["k", "n"], aggfunc="sum", fill_value=0)
    return table.index, table["k"].to_numpy(float), table["n"].to_numpy(float), table["k"].columns.to_numpy(float)


def resampled_t50(k_table: np.ndarray, n_table: np.ndarray, steps: np.ndarray, rows: np.ndarray,
                  rng: np.random.Generator, threshold: float) -> float:
    """t50 of one two-stage resample: the scenarios `rows` (drawn with replacement), then each one's replies
    redrawn binomially at its observed rate (inf when the resample does not cross)."""
    rate = np.divide(k_table[rows], n_table[rows], out=np.zeros_like(k_table[rows]), where=n_table[rows] > 0)
    k_b = rng.binomial(n_table[rows].astype(int), rate).sum(axis=0).astype(float)
    n_b = n_table[rows].sum(axis=0)
    keep = n_b > 0
    if keep.sum() < 2:
        return math.nan
    form, intercept, slope = best_form(steps[keep], k_b[keep], n_b[keep])
    return _crossing(intercept, slope, form, threshold)


def _bootstrap(counts: pd.DataFrame, threshold: float, n_bootstrap: int, seed: int) -> np.ndarray:
    """t50 of each two-stage resample (scenarios with replacement, then each scenario's replies)."""
    rng = np.random.default_rng(seed)
    _, k_table, n_table, steps = scenario_tables(counts)
    return np.array([resampled_t50(k_table, n_table, steps, rng.integers(0, len(k_table), len(k_table)), rng,
                                   threshold) for _ in range(n_bootstrap)])


def confirmed_flip(rates: pd.DataFrame, threshold: float) -> int | None:
    """First step whose rate interval lies wholly above the threshold (rates: step, lo)."""
    above = rates[rates.lo > threshold].sort_values("step")
    return int(above.step.iloc[0]) if len(above) else None
