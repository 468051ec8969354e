"""The steering screen's multiplier search: each layer's best multiplier found from a few settings.

The screen's criterion (`steering.select`) wants, per training set, the setting with the highest
in-distribution p_preferred (ties: margin) among those with retention_kl <= a bound. Sweeping every
multiplier of every layer costs len(multipliers) settings per layer. The search instead scores, per
layer and per sign of the multiplier, outward from 0 along the configured grid:

1. the smallest magnitude first: where it is eligible and not better than the unsteered model
   (multiplier 0, scored once), this sign cannot improve on it and the side ends there;
2. otherwise the retention bound's edge by bisection on the magnitude (retention_kl grows with |m|);
3. then from the edge inward while the next smaller magnitude scores higher (p_preferred is taken
   to rise and then fall along a side).

Under those two shapes it returns the same per-layer best as the full sweep; where the real curves
break them it may miss a setting, which is why `steering.screen.search: grid` stays available and
the shipped study's full-grid table is kept as a test (`tests/interventions/test_multiplier_search.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Scores = Mapping[str, float]


def _key(row: Scores) -> tuple[float, float]:
    return (row["p_preferred"], row["margin"])


def search_layer(multipliers: Sequence[float], score: Callable[[float], Scores], max_retention_kl: float,
                 unsteered: Scores) -> dict[float, Scores]:
    """Scores a subset of `multipliers` (0 excluded) with `score`; returns {multiplier: scores} for every
    one it scored. The best eligible one among them is the layer's best under the shapes above.

    `unsteered` is the scores at multiplier 0 (p_preferred, margin): the reference each side must beat.
    """
    scored: dict[float, Scores] = {}

    def row(m: float) -> Scores:
        if m not in scored:
            scored[m] = score(m)
        return scored[m]

    def eligible(m: float) -> bool:
        return row(m)["retention_kl"] <= max_retention_kl

    positive = sorted(m for m in set(multipliers) if m > 0)
    negative = sorted((m for m in set(multipliers) if m < 0), reverse=True)  # -0.5, -1, ... (outward)
    for side in (positive, negative):
        if not side:
            continue
        first = side[0]
        if not eligible(first):
            continue  # the smallest step already breaks retention: nothing further out is eligible
        if _key(row(first)) <= _key(unsteered):
            continue  # this direction does not raise p_preferred: further out is lower still
        # side[:lo + 1] eligible, side[hi:] not: bisect the bound's edge
        lo, hi = 0, len(side)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if eligible(side[mid]):
                lo = mid
            else:
                hi = mid
        # climb inward from the edge while the next smaller magnitude is better
        j = lo
        while j > 0 and _key(row(side[j - 1])) > _key(row(side[j])):
            j -= 1
    return scored

