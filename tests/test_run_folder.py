"""A run's folder is read one way: by the forecast stage and by the forecast bench's fitted model alike."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from phaseflip.io import DataError, write_csv, write_json
from phaseflip.run_folder import RUN_METADATA, evaluated_runs, read_run, scenario_table, stamp

INFO = {"run_id": "lr1e-03_nall_k0_s0", "lr": 1e-3, "n_real": "all", "dream_k": 0, "seed": 0, "control": False,
        "status": "completed"}


def write_run(folder: Path, scenarios: bool = True, train_log: bool = True) -> Path:
    write_json(folder / "run.json", INFO)
    write_csv(folder / "metrics.csv", pd.DataFrame({"step": [0, 2], "value": [0.1, 0.6]}))
    if scenarios:
        write_csv(folder / "scenarios.csv", pd.DataFrame({"step": [0, 2], "scenario_id": ["a", "a"]}))
    if train_log:
        write_csv(folder / "train_log.csv", pd.DataFrame({"step": [1, 2], "grad_norm": [1.0, 2.0]}))
    return folder


def test_read_run_reads_every_table_and_only_an_incomplete_read_tolerates_missing_ones(tmp_path: Path) -> None:
    full = read_run(write_run(tmp_path / "full"))
    assert full.run_id == INFO["run_id"] and full.info == INFO
    assert full.metrics.value.tolist() == [0.1, 0.6] and len(full.scenarios) == 2 and len(full.train_log) == 2
    bare_dir = write_run(tmp_path / "bare", scenarios=False, train_log=False)
    bare = read_run(bare_dir, complete=False)
    assert bare.scenarios.empty and bare.train_log.empty and len(bare.metrics) == 2
    with pytest.raises(DataError, match="scenarios.csv"):
        read_run(bare_dir)


def test_read_run_without_metrics_names_the_file(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "r")
    (folder / "metrics.csv").unlink()
    with pytest.raises(DataError, match="metrics.csv"):
        read_run(folder)


def test_evaluated_runs_skips_folders_not_yet_evaluated(tmp_path: Path) -> None:
    done = write_run(tmp_path / "done")
    (tmp_path / "training").mkdir()
    write_json(tmp_path / "training" / "run.json", INFO)
    assert [r.run_id for r in evaluated_runs([tmp_path / "training", done])] == [INFO["run_id"]]


def test_stamp_puts_the_run_id_first_and_its_grid_point_last() -> None:
    table = stamp(pd.DataFrame({"step": [0], "value": [1.0]}), INFO)
    assert list(table.columns) == ["run_id", "step", "value", *RUN_METADATA]
    assert table.iloc[0].to_dict()["lr"] == 1e-3


def test_scenario_table_sits_beside_the_metrics() -> None:
    assert scenario_table(Path("results/runs/x/metrics.csv")) == Path("results/runs/x/scenarios.csv")
