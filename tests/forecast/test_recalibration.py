import dataclasses

import numpy as np
import pytest

from phaseflip.config import ForecastBenchConfig, ForecastConfig, compose, validate
from phaseflip.forecast.bench import run_bench, simulate_study
from phaseflip.forecast.bench_model import SimModel
from phaseflip.forecast.recalibration import Recalibrator, recalibrated_name, remap
from phaseflip.forecast.view import LeakageError

CFG = ForecastConfig(forecast_bootstrap=30)
DRAWS = np.linspace(2.0, 12.0, 200)


def test_uniform_pits_leave_the_forecast_as_it_is() -> None:
    pits = (np.arange(400) + 0.5) / 400
    out = remap(DRAWS, pits, np.ones_like(pits), prior=5.0)
    assert np.quantile(out, [0.1, 0.5, 0.9]) == pytest.approx(np.quantile(DRAWS, [0.1, 0.5, 0.9]), abs=0.1)


def test_pits_piled_at_the_top_move_the_forecast_later_and_the_prior_holds_it_back() -> None:
    """Truths fell above most draws (a forecaster that is too early): the remapped median is later; with
    more pseudo-PITs of a calibrated forecaster it moves less; with no PIT at all it does not move."""
    pits = np.full(20, 0.95)
    weak, strong = (np.median(remap(DRAWS, pits, np.ones(20), prior=p)) for p in (1.0, 40.0))
    assert weak > strong > np.median(DRAWS) + 0.1
    assert np.median(remap(DRAWS, np.array([]), np.array([]), prior=5.0)) == pytest.approx(np.median(DRAWS), abs=0.1)
    narrow = remap(DRAWS, np.full(20, 0.5), np.ones(20), prior=1.0)  # PITs at the middle: too wide a forecast
    assert np.ptp(np.quantile(narrow, [0.1, 0.9])) < 0.5 * np.ptp(np.quantile(DRAWS, [0.1, 0.9]))


def test_draws_beyond_the_horizon_stay_beyond() -> None:
    draws = np.concatenate([DRAWS[:100], np.full(100, np.inf)])  # half: no crossing within the horizon
    out = remap(draws, np.full(10, 0.9), np.ones(10), prior=2.0)
    assert np.isinf(out).mean() > 0.5 and np.isfinite(out).any()


def study(seed: int = 0) -> list:
    return [r.run for r in simulate_study(SimModel(), 5, 0.0, 0.5, np.random.default_rng(seed))]


def test_calibration_never_reads_the_run_being_forecast() -> None:
    """The PITs a run is recalibrated on come from the other configurations' runs, each forecast without
    the run's configuration: planting another outcome and another curve in the run changes none of them."""
    runs = study()  # the other runs carry their estimated t50, as a finished study knows them
    target = runs[2]
    before = Recalibrator(runs, CFG, 16).calibration_pits(target)
    assert len(before[1]) >= 5
    planted = dataclasses.replace(target, t50=1.0, curve=target.curve.assign(x=target.curve.x[::-1].to_numpy()))
    after = Recalibrator([*runs[:2], planted, *runs[3:]], CFG, 16).calibration_pits(planted)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_a_nested_forecast_that_sees_an_excluded_configuration_is_caught() -> None:
    runs = study()
    rec = Recalibrator(runs, CFG, 16)
    excluded = frozenset({runs[0].configuration, runs[1].configuration})
    rec._context(frozenset())  # a context over every run, planted under the pair's key
    rec._contexts[excluded] = rec._contexts[frozenset()]
    with pytest.raises(LeakageError, match="excluded configuration"):
        rec.calibration_pits(runs[0])


def test_recalibration_moves_coverage_towards_nominal_where_the_forecaster_is_off() -> None:
    """Under a delayed onset (outside the primary's model class) the raw 80% intervals cover far less than 80%;
    the recalibrated ones, from PITs on the other configurations only, cover more and stay below 0.95."""
    registered = validate(compose([])).forecast.bench.generators  # pre-registered in conf/, not in the defaults
    cfg = ForecastConfig(forecast_bootstrap=30, bench=ForecastBenchConfig(control_share=0.0, n_bootstrap=30,
                                                                          generators=registered))
    rows = run_bench(SimModel(), cfg, n_runs=12, seed=0, processes=1, generators=["delayed_onset"],
                     methods=["pooled_link"])
    late = rows[(rows.origin_fraction >= 0.25) & rows.forecast_made.astype(bool)]
    cover = {m: late[late.method == m].covered_80.astype(float).mean()
             for m in ("pooled_link", recalibrated_name("pooled_link"))}
    assert len(late[late.method == "pooled_link"]) >= 20
    assert cover["pooled_link"] < 0.65, cover
    assert cover["pooled_link"] + 0.1 <= cover[recalibrated_name("pooled_link")] <= 0.95, cover
