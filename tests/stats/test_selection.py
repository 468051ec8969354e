"""Held-out selection: no winner's curse where every candidate is equally good, and the better one found."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from phaseflip.stats.selection import held_out_selection, split_scenarios


def candidates(rng: np.random.Generator, true_rates: list[float], scenarios: int = 30, replies: int = 6,
               scenario_sd: float = 1.0) -> pd.DataFrame:
    """One row per candidate and scenario; scenarios differ (a shared offset, as on one evaluation set)."""
    offset = rng.normal(0, scenario_sd, scenarios)
    rows = []
    for c, rate in enumerate(true_rates):
        p = expit(logit(rate) + offset)
        k = rng.binomial(replies, p)
        rows += [{"setting": c, "scenario_id": f"s{i}", "k": int(k[i]), "n": replies} for i in range(scenarios)]
    return pd.DataFrame(rows)


def test_split_is_seeded_disjoint_and_complete() -> None:
    ids = [f"s{i}" for i in range(11)]
    a, b = split_scenarios(ids, seed=3)
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(ids) and (len(a), len(b)) == (5, 6)
    assert split_scenarios(list(reversed(ids)), seed=3) == (a, b)  # order of the input does not matter
    assert split_scenarios(ids, seed=4) != (a, b)
    with pytest.raises(ValueError, match=">= 4"):
        split_scenarios(ids[:3], seed=0)


def population_rate(rate: float, scenario_sd: float = 1.0) -> float:
    """The rate over the population of scenarios (what a scenario-clustered interval estimates)."""
    z = np.random.default_rng(123).normal(0, scenario_sd, 400_000)
    return float(expit(logit(rate) + z).mean())


def test_no_winners_curse_where_candidates_are_equal() -> None:
    """14 candidates (a LoRA grid's checkpoints) all equally good: the best of them read on the replies it was
    chosen on is biased up; read on the other half it is not, and its 95% interval covers the truth about as
    often as nominal (200 simulated evaluations of 30 scenarios x 6 replies, scenario sd 1 on the logit)."""
    rng = np.random.default_rng(0)
    truth = population_rate(0.4)
    naive, held, covered = [], [], []
    for _ in range(200):
        table = candidates(rng, [0.4] * 14)
        every = table.groupby("setting")[["k", "n"]].sum()
        naive.append(float((every.k / every.n).max()))
        a, b = split_scenarios(table.scenario_id.unique(), seed=int(rng.integers(1 << 30)))
        sel = held_out_selection(table, ["setting"], a, b)
        assert sel is not None and sel.candidates == 14 and sel.scenarios == len(b) == 15
        held.append(sel.rate)
        covered.append(sel.lo <= truth <= sel.hi)
    print(f"truth {truth:.3f}: naive best {np.mean(naive):.3f}, held out {np.mean(held):.3f}, "
          f"coverage {np.mean(covered):.3f}")
    assert np.mean(naive) - truth > 0.04  # the maximum of 14 noisy rates
    assert abs(np.mean(held) - truth) < 0.015  # unbiased to within ~2.5 standard errors of the mean
    assert 0.90 <= np.mean(covered) <= 0.99


def test_the_better_candidate_is_found_and_ties_are_deterministic() -> None:
    rng = np.random.default_rng(1)
    found = []
    for _ in range(100):
        table = candidates(rng, [0.4] * 6 + [0.65] + [0.4] * 6)
        a, b = split_scenarios(table.scenario_id.unique(), seed=0)
        sel = held_out_selection(table, ["setting"], a, b)
        assert sel is not None
        found.append(sel.choice["setting"] == 6)
    assert np.mean(found) >= 0.9
    tied = pd.DataFrame({"setting": [2, 1, 2, 1] * 2, "scenario_id": ["a", "a", "b", "b", "c", "c", "d", "d"],
                         "k": [1] * 8, "n": [2] * 8})
    sel = held_out_selection(tied, ["setting"], ["a", "b"], ["c", "d"])
    assert sel is not None and sel.choice == {"setting": 1} and sel.rate == 0.5


def test_bad_table_and_unreadable_candidates() -> None:
    with pytest.raises(ValueError, match="lacks"):
        held_out_selection(pd.DataFrame({"scenario_id": ["a"], "k": [1]}), ["setting"], ["a"], ["b"])
    only_a = pd.DataFrame({"setting": [0], "scenario_id": ["a"], "k": [1], "n": [2]})
    assert held_out_selection(only_a, ["setting"], ["a"], ["b"]) is None  # never sampled on the report half
