"""Intervals for rates: Wilson for independent replies, clustered for replies nested in scenarios."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (math.nan, math.nan)
    return _wilson_at(successes / n, n, confidence)


def clustered_interval(successes: Sequence[int], trials: Sequence[int],
                       confidence: float = 0.95) -> tuple[float, float]:
    """Interval for a pooled rate whose samples come in clusters (n samples of each scenario).

    Samples of one scenario are correlated (a scenario the model "gets" yields mostly successes), so
    the binomial (Wilson) interval of the pooled count is too narrow. This is the Korn & Graubard (1998)
    construction: the cluster-robust (ratio-estimator) variance of the pooled rate gives a design effect
    `deff = var_cluster / var_binomial` (at least 1); the Wilson interval is then taken at the effective
    sample size `n / deff`, shrunk by `(z / t_{C-1})^2` for having only C clusters. It keeps Wilson's
    good behavior near 0 and 1 and reduces to Wilson when samples are independent. At a rate of exactly
    0 or 1 the design effect is unidentified; it is then taken at its largest, the mean cluster size
    (one effective sample per scenario), because a run of all-zero scenarios says nothing about how
    much scenarios differ, and the Korn-Graubard convention (deff = 1) undercovers there.
    Coverage on simulated clustered data: tests/stats/test_intervals.py.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    keep = n > 0
    k, n = k[keep], n[keep]
    total = n.sum()
    clusters = len(n)
    if total == 0:
        return (math.nan, math.nan)
    p = k.sum() / total
    if clusters <= 1:  # a single scenario: nothing to cluster over, the binomial interval of its samples
        return _wilson_at(p, total, confidence)
    n_eff = float(clusters)  # p in {0, 1}: see the docstring
    if 0 < p < 1:
        var_cluster = clusters / (clusters - 1) * float(((k - p * n) ** 2).sum()) / total**2
        var_binomial = p * (1 - p) / total
        n_eff = total / max(1.0, var_cluster / var_binomial)
        # Few clusters: the variance estimate has C-1 degrees of freedom.
        z = float(norm.ppf(0.5 + confidence / 2))
        n_eff *= (z / float(student_t.ppf(0.5 + confidence / 2, clusters - 1))) ** 2
    return _wilson_at(p, n_eff, confidence)


def _wilson_at(p: float, n: float, confidence: float) -> tuple[float, float]:
    z = float(norm.ppf(0.5 + confidence / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval contains p in exact arithmetic; rounding put hi at 1 - 1e-16 < p = 1 for 13 of 13
    # (a negative error bar that stopped the forecast benchmark's figure).
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))
