"""Choosing a best setting without the winner's curse: select on half the scenarios, report on the other.

The report picks one "best" setting per setup (LoRA: a checkpoint of some run; steering: a training set,
layer and multiplier; ICL: a number of shots) by the highest in-distribution behavior rate. Read on the
replies it was chosen on, the chosen rate is biased upward (the maximum of noisy rates), and more so for
the setup with more candidates (LoRA: checkpoints x runs), which favours it in the comparison itself.

The rule here is the same for every setup. The scenarios every setup was scored on are split once, by a
seeded permutation, into a selection half and a report half. The candidate with the highest pooled rate
on the selection half is chosen; its rate and clustered interval (`stats.intervals.clustered_interval`)
are read on the report half, whose replies played no part in the choice. All setups share both halves,
so their reported rates are on the same scenarios. The price is an interval about sqrt(2) wider.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phaseflip.stats.differences import Difference, paired_rate_difference
from phaseflip.stats.intervals import clustered_interval


@dataclass(frozen=True)
class HeldOutSelection:
    """The candidate chosen on the selection half and its rate on the report half (95% clustered)."""
    choice: dict[str, Any]  # the chosen candidate's key columns
    candidates: int
    selection_rate: float  # its pooled rate on the selection half (what it was chosen on: optimistic)
    rate: float  # on the report half
    lo: float
    hi: float
    scenarios: int  # report-half scenarios it was read on
    replies: int
    # its report-half counts per scenario (scenario_id -> k, n): paired comparisons between setups
    counts: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False, repr=False)


def split_scenarios(scenario_ids: Sequence[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """(selection half, report half) of the distinct ids: a permutation seeded by `seed` of their sorted
    order, so the same ids and seed give the same halves on any machine; the report half gets the odd one."""
    ids = sorted({str(s) for s in scenario_ids})
    if len(ids) < 4:
        raise ValueError(f"split_scenarios: {len(ids)} scenarios; a held-out selection needs >= 4 (2 per half)")
    order = np.random.default_rng(seed).permutation(len(ids))
    half = len(ids) // 2
    return [ids[i] for i in order[:half]], [ids[i] for i in order[half:]]


def held_out_selection(table: pd.DataFrame, keys: list[str], selection: Sequence[Any], report: Sequence[Any],
                       confidence: float = 0.95) -> HeldOutSelection | None:
    """Choose among the candidates of `table` (one row per candidate and scenario: `keys`..., scenario_id,
    k, n) by pooled k / n on the `selection` scenarios, and read the chosen one on the `report` scenarios.
    Ties go to the first candidate in sorted key order. None when no candidate was sampled on both halves."""
    missing = [c for c in [*keys, "scenario_id", "k", "n"] if c not in table.columns]
    if missing:
        raise ValueError(f"held_out_selection: the table lacks {missing} (has {list(table.columns)})")
    t = table[table.n > 0].assign(scenario_id=lambda d: d.scenario_id.astype(str))
    sel, rep = t[t.scenario_id.isin(set(map(str, selection)))], t[t.scenario_id.isin(set(map(str, report)))]
    rates = sel.groupby(keys, sort=True)[["k", "n"]].sum()
    rates = rates[rates.index.isin(rep.groupby(keys).size().index)]  # candidates readable on the report half
    if rates.empty:
        return None
    pooled = rates.k / rates.n
    best = pooled.index[int(np.argmax(pooled.to_numpy()))]  # argmax: the first of ties in sorted order
    best_key = best if isinstance(best, tuple) else (best,)
    choice = dict(zip(keys, best_key, strict=True))
    mask = np.logical_and.reduce([rep[c] == v for c, v in choice.items()])
    rows = rep[mask].groupby("scenario_id")[["k", "n"]].sum()
    lo, hi = clustered_interval(rows.k.astype(int).tolist(), rows.n.astype(int).tolist(), confidence)
    return HeldOutSelection(choice, len(rates), float(pooled.loc[best]), float(rows.k.sum() / rows.n.sum()),
                            lo, hi, len(rows), int(rows.n.sum()), rows.reset_index())


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, confidence: float = 0.95) -> Difference:
    """Rate of `a` minus rate of `b` (each scenario_id, k, n: e.g. two setups' report-half counts), paired over
    the scenarios both sampled (`stats.differences.paired_rate_difference`)."""
    both = a.merge(b, on="scenario_id", suffixes=("_a", "_b"))
    return paired_rate_difference(both.k_a.to_numpy(), both.n_a.to_numpy(), both.k_b.to_numpy(), both.n_b.to_numpy(),
                                  confidence)
