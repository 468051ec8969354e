"""Stage forecast_bench: the forecast methods scored on runs simulated from a model fitted to this study
(`forecast.bench.bench`).

    python -m phaseflip.cli forecast_bench --params '{...}' --run-dirs results/runs/* --out results/forecast/bench
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phaseflip.config import ForecastConfig
from phaseflip.forecast.bench import bench


def run(params: dict[str, Any], out: str, run_dirs: list[str], threads: int | None = None) -> None:
    cfg = ForecastConfig.model_validate(params["forecast"])
    processes = min(cfg.bench.processes, threads or cfg.bench.processes)  # the job's cores
    bench([Path(d) for d in run_dirs], cfg, Path(out), processes=processes)
