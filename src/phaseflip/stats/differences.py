"""What the study's numbers can and cannot claim: differences with intervals, seed spread, power.

The report's answers use these so that every comparison carries its uncertainty and, where a question
is not answered, says what would answer it.

- `rate_difference`: the difference of two independently estimated rates with a 95% interval built
  from each rate's own interval (Newcombe's MOVER, 1998), so clustered intervals carry over.
- `seed_spread`: the standard deviation of t50 across seeds of one grid point, with its 95% interval
  (chi-square), the noise every between-arm comparison of t50 must beat.
- `seeds_per_arm`: seeds each arm needs so a two-sided t test (alpha 0.05) detects a t50 difference
  with 80% power, given that spread (statsmodels' power solver).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2
from statsmodels.stats.power import TTestIndPower


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


def rate_difference(after: tuple[float, float, float], before: tuple[float, float, float]) -> Difference:
    """after - before, each (rate, lo, hi) with a 95% interval: the MOVER interval of the difference."""
    p1, l1, u1 = after
    p2, l2, u2 = before
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Difference(d, max(-1.0, lo), min(1.0, hi))


@dataclass
class Spread:
    sd: float
    lo: float
    hi: float
    n: int


def seed_spread(values: list[float], confidence: float = 0.95) -> Spread | None:
    """Sample standard deviation of t50 over seeds, with its chi-square interval (needs >= 2 values)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None
    sd = float(x.std(ddof=1))
    df = len(x) - 1
    alpha = 1 - confidence
    lo = sd * math.sqrt(df / chi2.ppf(1 - alpha / 2, df))
    hi = sd * math.sqrt(df / chi2.ppf(alpha / 2, df))
    return Spread(sd, lo, hi, len(x))


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
