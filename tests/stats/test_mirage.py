import numpy as np
import pandas as pd

from phaseflip.stats.mirage import metric_scale, mirage_test, run_cells
from phaseflip.stats.simulation import GENERATORS, Truths, simulate_study


def _runs(name: str, studies: int, seed: int) -> list[pd.DataFrame]:
    gen = GENERATORS[name]
    truths = Truths(gen)
    return [r.cells for s in range(studies) for r in simulate_study(gen, truths, np.random.default_rng([seed, s]))]


def test_level_holds_where_the_mirage_holds_by_construction() -> None:
    # a floor and a ceiling: the rate is a function of the continuous metric the null's spline is not built for
    p = [mirage_test(c, n_draws=499).p_value for c in _runs("floor_ceiling", 15, 3)]
    rejected = np.mean([v < 0.05 for v in p if v is not None])
    assert len(p) == 60 and all(v is not None for v in p)
    assert rejected <= 0.12  # nominal 0.05; 60 runs (the command measures it on thousands)


def test_a_jump_the_continuous_metric_does_not_see_is_found() -> None:
    p = [mirage_test(c, n_draws=499).p_value for c in _runs("power_jump", 5, 4)]
    assert np.mean([v < 0.05 for v in p]) >= 0.8


def test_step_that_adds_nothing_gives_uniform_pvalues_not_zero() -> None:
    # exactly the null's own class: rate = expit(2 logit(x) - 0.6); p-values spread over (0, 1)
    p = np.array([mirage_test(c, n_draws=499).p_value for c in _runs("logistic", 10, 5)], dtype=float)
    assert 0.3 < np.median(p) < 0.7


def test_untestable_runs_say_why() -> None:
    flat = pd.DataFrame({"step": np.repeat([0, 2, 4], 10), "scenario_id": np.tile(range(10), 3), "k": 0, "n": 4,
                         "x": np.linspace(0.1, 0.2, 30)})
    t = mirage_test(flat)
    assert t.p_value is None and "every reply the same" in t.reason
    assert "not testable" in t.verdict()
    two = flat[flat.step < 4].assign(k=1)
    assert "checkpoints" in mirage_test(two).reason


def test_deterministic_for_a_seed() -> None:
    cells = _runs("logistic", 1, 6)[0]
    assert mirage_test(cells, seed=1).p_value == mirage_test(cells, seed=1).p_value


def test_cells_from_a_scenarios_table_and_metric_scale() -> None:
    sc = pd.DataFrame({"step": [0, 0, 2], "scenario_id": ["a", "b", "a"], "family": ["in_distribution"] * 2 + ["x"],
                       "behavior_k": [1, 2, 3], "n": [4, 4, 4], "p_preferred": [0.5, 0.9, 0.2], "margin": [0, 1, 2]})
    cells = run_cells(sc, "p_preferred", "in_distribution")
    assert list(cells.k) == [1, 2] and list(cells.x) == [0.5, 0.9]
    assert metric_scale(np.array([0.5]), bounded=True)[0] == 0.0
    assert np.isfinite(metric_scale(np.array([0.0, 1.0]), bounded=True)).all()
    assert metric_scale(np.array([-3.0]), bounded=False)[0] == -3.0
