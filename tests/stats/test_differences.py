import numpy as np
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
