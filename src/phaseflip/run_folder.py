"""A run's folder, `results/runs/<run_id>/`: what train and evaluate write there, read back one way.

train writes `run.json` (the run's grid point and status), `train_log.csv` and `checkpoints/`;
evaluate writes `metrics.csv` and, beside it, `scenarios.csv` (per-scenario counts). Every reader
(the forecast stage, the forecast bench's fitted model) goes through `read_run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from phaseflip.io import read_csv, read_json

RUN_METADATA = ("lr", "n_real", "dream_k", "seed", "control", "status")  # run.json fields stamped on each row


class RunRecord(NamedTuple):
    run_id: str
    metrics: pd.DataFrame
    scenarios: pd.DataFrame  # empty for a study written before per-scenario counts existed
    train_log: pd.DataFrame  # empty when the run folder has none
    info: dict[str, Any]


def scenario_table(metrics_csv: Path) -> Path:
    """The per-scenario counts written beside a metrics table: metrics.csv -> scenarios.csv."""
    return metrics_csv.with_name("scenarios.csv")


def read_run(run_dir: Path) -> RunRecord:
    """A finished run: its metrics (required), per-scenario counts and training log (empty if absent), run.json."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    metrics = run_dir / "metrics.csv"

    def optional(path: Path) -> pd.DataFrame:
        return read_csv(path) if path.exists() else pd.DataFrame()

    return RunRecord(info["run_id"], read_csv(metrics), optional(scenario_table(metrics)),
                     optional(run_dir / "train_log.csv"), info)


def evaluated_runs(run_dirs: list[Path]) -> list[RunRecord]:
    """The runs among `run_dirs` that have been evaluated (have a metrics.csv), in order."""
    return [read_run(d) for d in map(Path, run_dirs) if (d / "metrics.csv").exists()]


def stamp(table: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """`table` with the run's id first and its grid point (RUN_METADATA) as the last columns, in place."""
    table.insert(0, "run_id", info["run_id"])
    for key in RUN_METADATA:
        table[key] = info[key]
    return table
