import math

import numpy as np
import pytest

from phaseflip.stats.simulation import GENERATORS, Generator, Truths, format_table, main, run_suite, target_mark


def test_population_t50_is_where_the_mean_rate_crosses() -> None:
    # no scenario speeds, symmetric offsets: the mean of expit(z) is 0.5 where z's centre is 0, -3 + 0.42 s = 0
    t = Truths(Generator("sym", "", sd_speed=0.0)).t50(1.0)
    assert abs(t - 3.0 / 0.42) < 0.05
    assert Truths(GENERATORS["floor"]).t50(1.0) < t < Truths(GENERATORS["plateau"]).t50(1.0)
    assert math.isinf(Truths(Generator("never", "", rate=lambda z, s, u: 0.4 * (z > -99))).t50(1.0))


def test_suite_scores_every_interval_and_the_mirage_test() -> None:
    table = run_suite(["logistic", "power_jump"], studies=2, n_bootstrap=20, progress=False)
    got = set(zip(table.generator, table.interval, strict=True))
    for key in ("t50", "t50_diff_paired", "t50_diff_arms", "rate_diff", "rate_diff_paired", "mirage_run",
                "mirage_pooled"):
        assert ("logistic", key) in got
    measures = dict(zip(zip(table.generator, table.interval, strict=True), table.measure, strict=True))
    assert measures[("logistic", "mirage_run")] == "type_I_error"
    assert measures[("power_jump", "mirage_run")] == "power"
    assert ((table.rate >= 0) & (table.rate <= 1) & (table.lo <= table.rate) & (table.rate <= table.hi)).all()
    assert "| logistic | t50 | coverage_95 |" in format_table(table)


def test_target_marks() -> None:
    assert target_mark("coverage_95", 0.95, 0.9, 0.99) == "met"
    assert target_mark("coverage_95", 0.99, 0.9, 1.0) == "consistent"
    assert target_mark("coverage_95", 0.70, 0.6, 0.8) == "missed"
    assert target_mark("type_I_error", 0.20, 0.1, 0.3) == "missed"
    assert target_mark("power", 0.9, 0.8, 0.95) == "reported"


def test_command_refuses_an_unknown_generator(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "unknown generator" in capsys.readouterr().err


def test_studies_are_reproducible() -> None:
    a = run_suite(["floor"], studies=1, n_bootstrap=10, progress=False)
    b = run_suite(["floor"], studies=1, n_bootstrap=10, progress=False)
    assert np.array_equal(a.hits.to_numpy(), b.hits.to_numpy())
    # a generator draws the same studies whichever others run beside it (the README's two halves)
    both = run_suite(["power_jump", "floor"], studies=1, n_bootstrap=10, progress=False)
    assert np.array_equal(both[both.generator == "floor"].hits.to_numpy(), a.hits.to_numpy())
