"""Change points of a checkpoint series (ruptures): where a run's metric shifts, as a transition baseline.

Used by the transition analysis (`forecast.analysis`: each run's change point and its lag to t50) and by
the change-point forecast baseline (`forecast.methods`), so it lives below both.
"""

from __future__ import annotations

import math

import numpy as np
import ruptures as rpt


def best_change_point(steps: np.ndarray, values: np.ndarray) -> int | None:
    """The single most likely change point of a series (ruptures, least-squares cost)."""
    if len(values) < 4:
        return None
    bkps = rpt.Binseg(model="l2", min_size=1, jump=1).fit(values.reshape(-1, 1)).predict(n_bkps=1)
    return int(steps[bkps[0]]) if bkps and bkps[0] < len(steps) else None


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
