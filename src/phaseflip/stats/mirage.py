"""The mirage test: does step explain the sampled behavior rate beyond what the continuous metric does?

The "mirage" reading of a sharp flip (the sharpness is the yes/no metric's, not the model's) makes a
testable claim: each scenario's sampled rate is a fixed function of its continuous metric (the same
function at every checkpoint, and, pooled, in every run), so once that metric is known, the step adds
nothing. The test fits, per (scenario, checkpoint) with k of n replies showing the behavior,

    null:         logit P(behavior) = a + spline(g(x), link_df)               (a fixed, flexible link)
    alternative:  logit P(behavior) = a + spline(g(x), link_df) + poly(step, step_df)

with `x` the scenario's continuous metric at that checkpoint (`g` = logit for a probability such as
p_preferred, identity for a margin; the link a natural cubic spline, patsy's `cr`), fits the null by
binomial GLM (statsmodels) and tests the step terms by their score, clustered by scenario (replies to one
scenario are correlated, and the same scenarios are scored at every checkpoint and in every run), with a
p-value from the wild score bootstrap (each scenario's score sign-flipped; Kline & Santos 2012): the
sandwich Wald F with 30 scenarios rejected 8% of true nulls at 0.05 in simulation, this test holds the
level. p < alpha: step adds what the continuous metric does
not ("not a mirage"); otherwise the rate is consistent with a fixed link of the metric ("consistent
with a mirage": not proof of one; the test's power on simulated genuine jumps says how much the
non-rejection means).

Type-I error (mirage true by construction, with links outside the null's model class) and power
(genuine jumps) are measured by `phaseflip.stats.simulation` (tests/stats/test_mirage.py, and the
command `python -m phaseflip.stats.simulation`).

    from phaseflip.stats.mirage import mirage_test
    result = mirage_test(cells, bounded=True)   # cells: step, scenario_id, k, n, x [, run_id]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from patsy import dmatrix

# A probability metric is clipped away from 0 and 1 before its logit (a scored probability of exactly 0
# or 1 is a rounding artefact of the model's log-probabilities, not an infinite margin).
CLIP = 1e-4


@dataclass
class MirageTest:
    statistic: float | None  # clustered score statistic of the step terms / their number (None: not testable)
    p_value: float | None  # from the wild score bootstrap
    df_num: int
    n_cells: int
    n_scenarios: int
    reason: str  # why not testable, or ""

    def verdict(self, alpha: float = 0.05) -> str:
        if self.p_value is None:
            return f"not testable ({self.reason})"
        if self.p_value < alpha:
            return "step adds to the continuous metric: not a mirage"
        return "consistent with a mirage (a fixed link of the continuous metric explains the rate)"

    def describe(self) -> str:
        if self.p_value is None:
            return "n/a"
        return (f"score {self.statistic:.2f} ({self.df_num} step terms, {self.n_scenarios} scenarios), "
                f"p = {self.p_value:.3g}")


def _poly(v: np.ndarray, degree: int) -> np.ndarray:
    """Columns z, z^2, ... z^degree of v standardized (a polynomial basis without the constant)."""
    sd = float(v.std())
    z = (v - float(v.mean())) / (sd if sd > 0 else 1.0)
    return np.column_stack([z**d for d in range(1, degree + 1)]) if degree else np.empty((len(v), 0))


def link_basis(g: np.ndarray, df: int) -> np.ndarray:
    """The null's link: a natural cubic regression spline of g with `df` columns (knots at quantiles; patsy),
    flexible where the data are and linear in the tails, so a floor or a ceiling is not read as a step."""
    distinct = len(np.unique(g))
    if distinct <= df + 1:
        return _poly(g, max(1, min(df, distinct - 1)))
    basis = np.asarray(dmatrix(f"cr(g, df={df}) - 1", {"g": g}))
    return basis[:, 1:]  # the spline's columns sum to 1: drop one, the intercept is in the design


def metric_scale(x: np.ndarray, bounded: bool) -> np.ndarray:
    """The continuous metric on the link's scale: logit for a probability, as is for a margin."""
    x = np.asarray(x, dtype=float)
    if not bounded:
        return x
    p = np.clip(x, CLIP, 1 - CLIP)
    return np.log(p / (1 - p))


def mirage_test(cells: pd.DataFrame, bounded: bool = True, link_df: int = 8, step_df: int = 2,
                n_draws: int = 1999, seed: int = 0) -> MirageTest:
    """Test the step terms beyond a fixed link of the continuous metric (module docstring).

    cells: one row per (scenario, checkpoint[, run]) with step, scenario_id, k, n, x. Pooled over runs,
    the link is common to them and clustering stays on scenario (the same scenarios in every run)."""
    cells = cells[(cells.n > 0) & np.isfinite(cells.x.astype(float))]
    n_scen = int(cells.scenario_id.nunique())
    steps = np.asarray(cells.step, dtype=float)
    n_steps = len(np.unique(steps))
    step_df = min(step_df, n_steps - 1)
    base = dict(df_num=step_df, n_cells=len(cells), n_scenarios=n_scen)
    if n_steps < 3 or step_df < 1:
        return MirageTest(None, None, reason=f"{n_steps} checkpoints: at least 3 are needed", **base)
    if n_scen < 8:
        return MirageTest(None, None, reason=f"{n_scen} scenarios: at least 8 are needed to cluster", **base)
    k, n = cells.k.to_numpy(float), cells.n.to_numpy(float)
    if k.sum() == 0 or k.sum() == n.sum():
        return MirageTest(None, None, reason="every reply the same: no variation to explain", **base)
    g = metric_scale(cells.x.to_numpy(float), bounded)
    x_null = np.column_stack([np.ones(len(cells)), link_basis(g, link_df)])
    x_step = _poly(steps, step_df)
    groups = pd.factorize(cells.scenario_id)[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(np.column_stack([k, n - k]), x_null, family=sm.families.Binomial()).fit()
    except Exception as err:  # a singular design
        return MirageTest(None, None, reason=f"the null fit failed ({type(err).__name__})", **base)
    mu = np.clip(np.asarray(res.fittedvalues, dtype=float), 1e-9, 1 - 1e-9)
    # The efficient score of the step terms at the null fit, per scenario: the step columns with the null's
    # columns projected out (weights n mu (1 - mu)), times the residuals k - n mu, summed within scenario.
    wts = n * mu * (1 - mu)
    xtwx = x_null.T @ (x_null * wts[:, None])
    proj = np.linalg.lstsq(xtwx, x_null.T @ (x_step * wts[:, None]), rcond=None)[0]
    resid = x_step - x_null @ proj
    per_cell = resid * (k - n * mu)[:, None]
    scores = np.zeros((n_scen, step_df))
    np.add.at(scores, groups, per_cell)
    cov = scores.T @ scores
    try:
        inv = np.linalg.pinv(cov)
    except np.linalg.LinAlgError:
        return MirageTest(None, None, reason="singular covariance of the step scores", **base)
    total = scores.sum(axis=0)
    stat = float(total @ inv @ total)
    # Wild (sign-flip) score bootstrap over scenarios (Kline & Santos 2012): under the null each scenario's
    # score is centred, so flipping its sign leaves the distribution; the clustered covariance is unchanged.
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_draws, n_scen))
    flipped = signs @ scores
    draws = np.einsum("bi,ij,bj->b", flipped, inv, flipped)
    p = float((1 + np.sum(draws >= stat - 1e-9)) / (n_draws + 1))
    return MirageTest(stat / step_df, p, reason="", **base)


def run_cells(scenarios: pd.DataFrame, metric: str, family: str) -> pd.DataFrame:
    """A run's scenarios.csv as the test's cells (step, scenario_id, k, n, x) for one family."""
    sel = scenarios[(scenarios.family == family) & (scenarios.n > 0)] if len(scenarios) else scenarios
    if not len(sel) or metric not in sel:
        return pd.DataFrame(columns=["step", "scenario_id", "k", "n", "x"])
    return pd.DataFrame({"step": sel.step.to_numpy(float), "scenario_id": sel.scenario_id.to_numpy(),
                         "k": sel.behavior_k.to_numpy(float), "n": sel.n.to_numpy(float),
                         "x": sel[metric].to_numpy(float)})
