import numpy as np
import pandas as pd
import pytest

from phaseflip.stats.differences import rate_difference, seed_spread, seeds_per_arm
from phaseflip.stats.intervals import wilson_interval


def test_rate_difference_resolves_a_real_change_and_not_noise() -> None:
    up = rate_difference((0.8, *wilson_interval(40, 50)), (0.1, *wilson_interval(5, 50)))
    assert up.verdict() == "up" and up.lo <= 0.7 <= up.hi
    same = rate_difference((0.5, *wilson_interval(5, 10)), (0.4, *wilson_interval(4, 10)))
    assert same.verdict() == "no change resolved" and same.lo < 0 < same.hi


def test_rate_difference_interval_covers_the_truth_in_simulation() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(800):
        k1, k2 = rng.binomial(40, 0.6), rng.binomial(40, 0.3)
        d = rate_difference((k1 / 40, *wilson_interval(k1, 40)), (k2 / 40, *wilson_interval(k2, 40)))
        hits += d.lo <= 0.3 <= d.hi
    assert hits / 800 >= 0.93


def test_seed_spread_and_power() -> None:
    spread = seed_spread([8.0, 10.0])
    assert spread is not None and spread.sd == pytest.approx(2 ** 0.5) and spread.lo < spread.sd < spread.hi
    assert seed_spread([8.0]) is None
    # A difference of one spread needs ~17 seeds per arm at 80% power (the textbook d = 1 figure).
    assert seeds_per_arm(1.0, 1.0) == 17
    assert seeds_per_arm(1.0, 3.0) < seeds_per_arm(1.0, 1.0)
    assert seeds_per_arm(0.06, 2.0) == 2  # a tiny spread (two seeds 0.08 apart): the minimum, not a crash
    # formal's lr 6e-4 seeds: SD 0.03 and 0.1 (effect 20-67), where statsmodels' power is nan: still 2
    assert all(seeds_per_arm(sd, 2.0) == 2 for sd in (0.01, 0.03, 0.1, 0.2, 0.29))


def test_pooled_seed_spread_adds_degrees_of_freedom() -> None:
    from phaseflip.stats.differences import pooled_seed_spread

    s = pooled_seed_spread([[7.0, 9.0], [5.0, 6.0, 7.0], [3.0]])
    assert s is not None and s.df == 3 and s.n == 5
    assert abs(s.sd - ((2.0 + 2.0) / 3) ** 0.5) < 1e-12  # (1 + 1) + (1 + 0 + 1) over 1 + 2
    assert s.lo < s.sd < s.hi
    assert pooled_seed_spread([[7.0], [8.0, float("nan")]]) is None


def test_arm_difference_needs_the_seed_spread_and_widens_with_it() -> None:
    from phaseflip.stats.differences import Difference, Spread, t50_arm_difference

    paired = Difference(-1.0, -1.5, -0.5)
    assert t50_arm_difference(-1.0, paired, None) is None
    narrow = t50_arm_difference(-1.0, paired, Spread(0.01, 0.0, 1.0, 30, 29))
    assert narrow is not None and (narrow.lo, narrow.hi) == (-1.5, -0.5)  # never narrower than the paired one
    wide = t50_arm_difference(-1.0, paired, Spread(1.0, 0.5, 30.0, 2, 1))
    assert wide is not None and wide.lo < -10 and wide.hi > 10  # df 1: t = 12.7


def test_paired_bootstrap_is_narrower_than_unpaired_on_shared_scenarios() -> None:
    """Two runs on the same scenarios whose scenario effects dominate: pairing cancels them."""
    from phaseflip.stats.differences import paired_t50_difference
    from phaseflip.stats.t50 import fit_t50

    rng = np.random.default_rng(0)
    effects = rng.normal(0, 2.0, 30)

    def run(shift: float) -> pd.DataFrame:
        rows = [(s, c, int(rng.binomial(8, 1 / (1 + np.exp(-(0.8 * (s - 8 - shift) + effects[c]))))), 8)
                for s in (0, 2, 4, 6, 8, 10, 12, 16) for c in range(30)]
        return pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"])

    a, b = run(1.0), run(0.0)
    fa, fb = fit_t50(a, 0.5, 200, seed=1), fit_t50(b, 0.5, 200, seed=2)
    d = paired_t50_difference(a, b, fa.t50 - fb.t50, 0.5, 200, seed=3)
    unpaired = (fa.hi - fa.lo) ** 2 + (fb.hi - fb.lo) ** 2
    assert d.lo <= d.value <= d.hi
    assert (d.hi - d.lo) ** 2 < 0.5 * unpaired


def test_holm_is_stricter_than_each_interval_alone() -> None:
    from phaseflip.stats.differences import Difference, holm_verdicts

    # three differences each just excluding 0 at 95%: unadjusted "up" each, Holm keeps only what survives
    diffs = [Difference(0.10, 0.005, 0.2), Difference(0.10, 0.002, 0.2), Difference(0.30, 0.2, 0.4)]
    assert all(d.verdict() == "up" for d in diffs)
    verdicts = holm_verdicts(diffs, 0.05)
    assert [v for v, _ in verdicts] == ["no change resolved", "no change resolved", "up"]
    assert all(p >= d.p_value() for (_, p), d in zip(verdicts, diffs, strict=True))
    assert abs(Difference(0.0, -0.1, 0.1).p_value() - 1.0) < 1e-12
    assert abs(Difference(0.196, 0.0, 0.392).p_value() - 0.05) < 1e-3


@pytest.mark.parametrize(("a", "b", "spread"),
                         [(0.3, -0.8, "normal"), (0.8, -1.6, "bimodal"), (-2.5, 0.0, "normal"), (1.0, -8.0, "normal")])
def test_paired_rate_difference_covers_and_is_narrower_on_shared_scenarios(a: float, b: float, spread: str) -> None:
    """Two setups scored on the same scenarios (scenario offsets shared, sd ~1.5 on the logit; a bimodal
    offset distribution is outside any logit-normal model), 10-20 scenarios x 4-8 replies as the report half
    and the adaptive sampler give: the correlated MOVER interval covers the population difference about as
    often as nominal and is narrower than the independent one."""
    from phaseflip.stats.differences import paired_rate_difference
    from phaseflip.stats.intervals import clustered_interval

    rng = np.random.default_rng(7)

    def offsets(size: int) -> np.ndarray:
        if spread == "bimodal":
            return rng.choice([-1.5, 1.5], size) + rng.normal(0, 0.3, size)
        return rng.normal(0, 1.5, size)

    pop = offsets(400_000)
    truth = float((1 / (1 + np.exp(-(a + pop)))).mean() - (1 / (1 + np.exp(-(b + pop)))).mean())
    hits, widths, independent = [], [], []
    for _ in range(400):
        c = int(rng.integers(10, 21))
        u = offsets(c)
        n_a, n_b = rng.integers(4, 9, c), rng.integers(4, 9, c)
        k_a, k_b = rng.binomial(n_a, 1 / (1 + np.exp(-(a + u)))), rng.binomial(n_b, 1 / (1 + np.exp(-(b + u))))
        d = paired_rate_difference(k_a, n_a, k_b, n_b)
        hits.append(d.lo <= truth <= d.hi)
        widths.append(d.hi - d.lo)
        ind = rate_difference((k_a.sum() / n_a.sum(), *clustered_interval(k_a.tolist(), n_a.tolist())),
                              (k_b.sum() / n_b.sum(), *clustered_interval(k_b.tolist(), n_b.tolist())))
        independent.append(ind.hi - ind.lo)
    coverage = float(np.mean(hits))
    print(f"{spread} a={a} b={b}: truth {truth:.3f}, coverage {coverage:.3f}, width {np.mean(widths):.3f} "
          f"vs independent {np.mean(independent):.3f}")
    assert 0.92 <= coverage <= 0.99
    assert np.mean(widths) < np.mean(independent)
