"""Stage forecast: each run's transition (t50 with its interval), the mirage test per run and pooled, and
fixed-origin forecasts of the transition from every checkpoint, scored (`forecast.analysis.analyse_study`,
`forecast.analysis.mirage_table`, `forecast.scores.score_table`).

    python -m phaseflip.cli forecast --params '{...}' --run-dirs results/runs/* --out results/forecast
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import ForecastConfig, TrainConfig
from phaseflip.forecast.analysis import analyse_study, mirage_table
from phaseflip.forecast.scores import score_table
from phaseflip.io import write_csv
from phaseflip.run_folder import read_run


def run(params: dict[str, Any], out: str, run_dirs: list[str]) -> None:
    cfg = ForecastConfig.model_validate(params["forecast"])
    max_steps = TrainConfig.model_validate(params["train"]).max_steps
    runs = [read_run(Path(d)) for d in run_dirs]
    transitions, forecasts = analyse_study(runs, cfg, max_steps)
    write_csv(Path(out) / "transitions.csv", pd.DataFrame(transitions))
    write_csv(Path(out) / "mirage.csv", mirage_table(runs, cfg))
    write_csv(Path(out) / "forecasts.csv", forecasts)
    write_csv(Path(out) / "forecast_quality.csv", score_table(forecasts, seed=0))
    print(f"forecast: {sum(t['flipped'] for t in transitions)} of {len(transitions)} runs flipped")
