"""The steering screen's bracketing search against the full grid it replaces."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phaseflip.config import ScreenConfig
from phaseflip.interventions.multiplier_search import search_layer
from phaseflip.interventions.steering import select

GRID = [-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0]
# The shipped default study's whole screen (SmolLM2-135M-Instruct, listening, real-corrections vector,
# 30 layers x 10 multipliers, 6 scenarios, float32), `steering.screen.search=grid`.
SHIPPED_GRID = Path(__file__).parents[1] / "data" / "steering_screen_default_grid.csv"


def _searched(full: pd.DataFrame, bound: float, unsteered: dict[str, float]) -> pd.DataFrame:
    """What the search would score, read off a full grid's table (same numbers, fewer settings)."""
    rows = []
    for _, grp in full.groupby(["training_set", "layer"]):
        by_m = {float(r["multiplier"]): r for r in grp.to_dict("records")}
        found = search_layer(sorted(by_m), by_m.__getitem__, bound, unsteered)
        rows += [dict(found[m]) for m in sorted(found)]
    return pd.DataFrame(rows)


def _best(table: pd.DataFrame, bound: float) -> tuple[int, float]:
    chosen = select(table, ScreenConfig(full_evaluations=1, max_retention_kl=bound))
    row = chosen[chosen.selected].iloc[0]
    return int(row.layer), float(row.multiplier)


BASE_P = 0.3  # the unsteered model's p_preferred: the same at every layer (multiplier 0)
UNSTEERED = {"p_preferred": BASE_P, "margin": math.log(BASE_P / (1 - BASE_P)), "retention_kl": 0.0}


def _synthetic(rng: np.random.Generator, n_layers: int = 30) -> pd.DataFrame:
    """Layers whose retention_kl grows as m^2 and whose p_preferred rises then falls in m (the shapes the
    search assumes), equal to the unsteered model's at m = 0, with random peaks, widths and KL scales:
    some layers' best is interior, some at the retention edge, some on the negative side."""
    rows = []
    for layer in range(n_layers):
        kl_scale, peak = rng.uniform(0.002, 0.3), rng.uniform(-6, 9)
        width, height = rng.uniform(1, 8), rng.uniform(0, 3)
        for m in GRID:
            bump = math.exp(-((m - peak) / width) ** 2) - math.exp(-(peak / width) ** 2)
            margin = UNSTEERED["margin"] + height * bump
            rows.append({"training_set": "real", "layer": layer, "multiplier": m,
                         "p_preferred": 1 / (1 + math.exp(-margin)), "margin": margin,
                         "retention_kl": kl_scale * m * m})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(20))
def test_search_finds_the_grids_best_where_its_shapes_hold(seed: int) -> None:
    full = _synthetic(np.random.default_rng(seed))
    for bound in (0.5, 2.0, 1e9):
        searched = _searched(full, bound, UNSTEERED)
        assert set(searched.layer) == set(full.layer)  # every layer searched
        assert _best(searched, bound) == _best(full, bound)
    assert len(_searched(full, 0.5, UNSTEERED)) < 0.75 * len(full)


def test_search_scores_fewer_settings_and_stops_on_a_side_that_does_not_help() -> None:
    """A layer where steering only lowers p_preferred on the negative side: one negative setting scored."""
    calls: list[float] = []

    def score(m: float) -> dict[str, float]:
        calls.append(m)
        p = min(0.95, 0.4 + 0.05 * m)
        return {"p_preferred": p, "margin": p, "retention_kl": 0.01 * m * m}

    found = search_layer(GRID, score, 0.5, {"p_preferred": 0.4, "margin": 0.4, "retention_kl": 0.0})
    assert [m for m in calls if m < 0] == [-0.5]
    eligible = {m: r for m, r in found.items() if r["retention_kl"] <= 0.5}
    assert max(eligible, key=lambda m: eligible[m]["p_preferred"]) == 4.0  # 8 costs KL 0.64 > 0.5
    assert len(calls) == len(set(calls)) < len(GRID)  # each setting scored at most once


def test_search_on_the_shipped_studys_full_grid_selects_the_same_setting() -> None:
    full = pd.read_csv(SHIPPED_GRID)
    assert len(full) == 300 and full.layer.nunique() == 30
    bound = 0.5  # conf/steering/default.yaml's max_retention_kl
    # the unsteered model's scores on the same scenarios (multiplier 0), recorded with the table
    meta = pd.read_csv(SHIPPED_GRID.with_name("steering_screen_default_unsteered.csv")).iloc[0]
    unsteered = {"p_preferred": float(meta.p_preferred), "margin": float(meta.margin), "retention_kl": 0.0}
    searched = _searched(full, bound, unsteered)
    assert set(searched.layer) == set(full.layer)
    assert _best(searched, bound) == _best(full, bound)
    assert len(searched) <= 0.7 * len(full), len(searched)
