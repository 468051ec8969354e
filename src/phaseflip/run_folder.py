"""A run's folder, `results/runs/<run_id>/`: what train and evaluate write there, read back one way.

train writes `run.json` (the run's grid point and status), `train_log.csv` and `checkpoints/`;
evaluate writes `metrics.csv` and, beside it, `scenarios.csv` (per-scenario counts). Every reader of
run.json and the tables (the evaluate and forecast stages, the forecast bench's fitted model) goes through
here; the checkpoints are listed by the module that writes them (`interventions.train.checkpoints`).
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


def run_info(run_dir: Path) -> dict[str, Any]:
    """run.json: the run's id, grid point (RUN_METADATA) and training status."""
    return read_json(Path(run_dir) / "run.json")


def read_run(run_dir: Path, complete: bool = True) -> RunRecord:
    """A finished run: metrics.csv, scenarios.csv, train_log.csv and run.json. `complete` (what the study's own
    forecast stage reads) requires every table, so a damaged run folder stops it with the file named;
    otherwise (a study written before per-scenario counts, read by the forecast bench) a missing scenarios.csv
    or train_log.csv reads as an empty table."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    metrics = run_dir / "metrics.csv"

    def table(path: Path) -> pd.DataFrame:
        return read_csv(path) if complete or path.exists() else pd.DataFrame()

    return RunRecord(info["run_id"], read_csv(metrics), table(scenario_table(metrics)),
                     table(run_dir / "train_log.csv"), info)


def evaluated_runs(run_dirs: list[Path]) -> list[RunRecord]:
    """The runs among `run_dirs` that have been evaluated (have a metrics.csv), in order; missing optional
    tables read as empty (`read_run(complete=False)`)."""
    return [read_run(d, complete=False) for d in map(Path, run_dirs) if (d / "metrics.csv").exists()]


def stamp(table: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """`table` with the run's id first and its grid point (RUN_METADATA) as the last columns, in place."""
    table.insert(0, "run_id", info["run_id"])
    for key in RUN_METADATA:
        table[key] = info[key]
    return table
