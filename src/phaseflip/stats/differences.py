"""What the study's numbers can and cannot claim: differences with intervals, seed spread, power.

The report's answers use these so that every comparison carries its uncertainty and, where a question
is not answered, says what would answer it.

- `rate_difference`: the difference of two independently estimated rates with a 95% interval built
  from each rate's own interval (Newcombe's MOVER, 1998), so clustered intervals carry over.
- `seed_spread`: the standard deviation of t50 across seeds of one grid point, with its 95% interval
  (chi-square), the noise every between-arm comparison of t50 must beat.
- `pooled_seed_spread`: that spread pooled over every replicated grid point (df = sum of n_i - 1).
- `seeds_per_arm`: seeds each arm needs so a two-sided t test (alpha 0.05) detects a t50 difference
  with 80% power, given that spread (statsmodels' power solver).
- `paired_t50_difference`: t50(a) - t50(b) of two runs scored on the same scenarios, by a bootstrap that
  resamples the scenarios once for both (the pairing), then each run's replies; it covers evaluation
  noise only.
- `t50_arm_difference`: the same difference read as one between arms (grid points), with the seed
  spread included: d +- t_df * sqrt(2) * s_pooled, where s_pooled is the spread of t50 between seeds of
  one grid point scored on the same scenarios, so it holds seed noise and the evaluation noise that
  pairing leaves, the two parts of a single-seed difference's error (never narrower than the paired
  bootstrap's). Coverage by simulation: `phaseflip.stats.simulation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2, norm
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from phaseflip.stats.intervals import clustered_interval
from phaseflip.stats.t50 import best_curve, resampled_t50, scenario_tables


@dataclass
class Difference:
    value: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def verdict(self) -> str:
        if self.lo > 0:
            return "up"
        if self.hi < 0:
            return "down"
        return "no change resolved"

    def p_value(self, confidence: float = 0.95) -> float:
        """Two-sided p of "no difference", read off the interval as a normal one: the standard error is the
        half of the interval on the side of 0 over z (MOVER intervals are asymmetric)."""
        z = float(norm.ppf(0.5 + confidence / 2))
        side = (self.value - self.lo) if self.value >= 0 else (self.hi - self.value)
        if side <= 0:
            return 0.0 if self.value != 0 else 1.0
        return float(2 * norm.sf(abs(self.value) / (side / z)))


def holm_verdicts(diffs: list[Difference], alpha: float = 0.05) -> list[tuple[str, float]]:
    """("up" / "down" / "no change resolved", Holm-adjusted p) per difference: the family of verdicts
    holds its error rate at alpha (statsmodels' multipletests)."""
    if not diffs:
        return []
    reject, adjusted, _, _ = multipletests([d.p_value() for d in diffs], alpha=alpha, method="holm")
    return [(("up" if d.value > 0 else "down") if r else "no change resolved", float(p))
            for d, r, p in zip(diffs, reject, adjusted, strict=True)]


def rate_difference(after: tuple[float, float, float], before: tuple[float, float, float]) -> Difference:
    """after - before, each (rate, lo, hi) with a 95% interval: the MOVER interval of the difference."""
    return _mover(after, before, 0.0)


def _mover(a: tuple[float, float, float], b: tuple[float, float, float], r: float) -> Difference:
    """a - b from two (rate, lo, hi): MOVER (Zou & Donner 2008), with r the correlation of the two estimates
    (0: independent)."""
    p1, l1, u1 = a
    p2, l2, u2 = b
    d = p1 - p2
    lo = d - math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * r * (p1 - l1) * (u2 - p2), 0.0))
    hi = d + math.sqrt(max((u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * r * (u1 - p1) * (p2 - l2), 0.0))
    return Difference(d, max(-1.0, lo), min(1.0, hi))


def paired_rate_difference(k_a: np.ndarray, n_a: np.ndarray, k_b: np.ndarray, n_b: np.ndarray,
                           confidence: float = 0.95) -> Difference:
    """Pooled rate of a minus that of b, both scored on the same scenarios (row i of each array is scenario
    i): the MOVER interval with the correlation of the two estimates (Zou & Donner 2008), from each
    setup's clustered interval (`stats.intervals.clustered_interval`) and the correlation of the two
    estimators' per-scenario residuals k_i - p n_i. A scenario that is easy for one setup is easy for the
    other, so the correlation is mostly positive and the interval narrower than the independent MOVER's;
    where it is not estimable (a rate of exactly 0 or 1, no residual), it falls back to the independent
    one. Scenarios either setup did not sample are dropped."""
    k_a, n_a, k_b, n_b = (np.asarray(v, dtype=float) for v in (k_a, n_a, k_b, n_b))
    keep = (n_a > 0) & (n_b > 0)
    k_a, n_a, k_b, n_b = k_a[keep], n_a[keep], k_b[keep], n_b[keep]
    if keep.sum() < 2:
        raise ValueError(f"paired_rate_difference: {int(keep.sum())} scenarios sampled by both (>= 2 needed)")
    p_a, p_b = k_a.sum() / n_a.sum(), k_b.sum() / n_b.sum()
    (l_a, u_a), (l_b, u_b) = (clustered_interval(k.astype(int).tolist(), n.astype(int).tolist(), confidence)
                              for k, n in ((k_a, n_a), (k_b, n_b)))
    e_a, e_b = k_a - p_a * n_a, k_b - p_b * n_b
    scale = math.sqrt(float((e_a ** 2).sum() * (e_b ** 2).sum()))
    r = float((e_a * e_b).sum()) / scale if scale > 0 else 0.0
    return _mover((p_a, l_a, u_a), (p_b, l_b, u_b), r)


@dataclass
class Spread:
    sd: float
    lo: float
    hi: float
    n: int  # t50 values it is computed from
    df: int = 0  # degrees of freedom (n - 1 for one grid point; sum of n_i - 1 pooled)

    def __post_init__(self) -> None:
        self.df = self.df or self.n - 1


def _chi2_interval(sd: float, df: int, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    return (sd * math.sqrt(df / chi2.ppf(1 - alpha / 2, df)), sd * math.sqrt(df / chi2.ppf(alpha / 2, df)))


def seed_spread(values: list[float], confidence: float = 0.95) -> Spread | None:
    """Sample standard deviation of t50 over seeds, with its chi-square interval (needs >= 2 values)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None
    sd = float(x.std(ddof=1))
    return Spread(sd, *_chi2_interval(sd, len(x) - 1, confidence), len(x))


def pooled_seed_spread(groups: list[list[float]], confidence: float = 0.95) -> Spread | None:
    """The seed SD of t50 pooled over grid points: sqrt(sum of squared deviations / sum of (n_i - 1)), each
    group one grid point's crossed t50s; groups with < 2 values add nothing. None without any df."""
    ss, df, n = 0.0, 0, 0
    for values in groups:
        x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
            n += len(x)
    if not df:
        return None
    sd = math.sqrt(ss / df)
    return Spread(sd, *_chi2_interval(sd, df, confidence), n, df)


def paired_t50_difference(a: pd.DataFrame, b: pd.DataFrame, point: float, threshold: float,
                          n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> Difference:
    """t50(a) - t50(b) (`point`, from the two fits) with a percentile interval from a bootstrap paired over
    scenarios: each resample draws the scenarios both runs were scored on once, for both, then redraws each
    run's replies. A bound is infinite when more than its tail of resamples has a run that does not cross."""
    ids_a, ka, na, steps_a = scenario_tables(a)
    ids_b, kb, nb, steps_b = scenario_tables(b)
    common = ids_a.intersection(ids_b)
    if len(common) < 2:
        raise ValueError(f"paired_t50_difference: the runs share {len(common)} scenarios (>= 2 needed)")
    ia, ib = ids_a.get_indexer(common), ids_b.get_indexer(common)
    # each run's own curve (on its shared scenarios) starts its resamples' floor/ceiling fits
    warm_a = best_curve(steps_a, ka[ia].sum(0), na[ia].sum(0))
    warm_b = best_curve(steps_b, kb[ib].sum(0), nb[ib].sum(0))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        rows = rng.integers(0, len(common), len(common))
        ta = resampled_t50(ka, na, steps_a, ia[rows], rng, threshold, warm=warm_a)
        tb = resampled_t50(kb, nb, steps_b, ib[rows], rng, threshold, warm=warm_b)
        # inf - x = inf, x - inf = -inf, -inf (a floor above the threshold) keeps its sign; two runs that
        # both do not cross give nan (no difference measured) and are dropped
        diffs[i] = ta - tb if not (math.isinf(ta) and math.isinf(tb)) else math.nan
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.quantile(diffs, [alpha, 1 - alpha])) if len(diffs) else (-math.inf, math.inf)
    return Difference(float(point), min(lo, point), max(hi, point))


def t50_arm_difference(point: float, paired: Difference | None, spread: Spread | None,
                       confidence: float = 0.95) -> Difference | None:
    """A single-seed t50 difference as a difference between grid points: d +- t_{df} sqrt(2) s_pooled,
    never narrower than the paired bootstrap interval (module docstring). None when no grid point has two
    crossing seeds (the seed spread is not measured)."""
    if spread is None:
        return None
    half = float(student_t.ppf(0.5 + confidence / 2, spread.df)) * math.sqrt(2) * spread.sd
    lo, hi = point - half, point + half
    if paired is not None:
        lo, hi = min(lo, paired.lo), max(hi, paired.hi)
    return Difference(point, lo, hi)


def seeds_per_arm(sd: float, difference: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Seeds per arm for a two-sided two-sample t test to detect `difference` in t50 given seed spread `sd`."""
    if sd <= 0 or difference <= 0:
        return None
    test, effect = TTestIndPower(), difference / sd
    # Two seeds per arm is the least a two-sample t test can use; when even that has the power (a spread
    # far below the difference), the solver has no root above it and returns nan. Power grows with the
    # effect size, and statsmodels' noncentral t returns nan for very large ones (d = 20: an SD of 0.1 step
    # against 2 steps), so the check is made at d <= 10, where two seeds already give power 0.99.
    if test.power(effect_size=min(effect, 10.0), nobs1=2, alpha=alpha, ratio=1.0) >= power:
        return 2
    n = float(test.solve_power(effect_size=effect, power=power, alpha=alpha, ratio=1.0))
    return int(math.ceil(n)) if math.isfinite(n) else None
