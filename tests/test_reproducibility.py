"""Reproducibility and experiment history (issue #7, DESIGN §10), end to end in temporary git repositories.

One smoke study runs through DVC in a temp git repo (shared by every test here); a second runs from
scratch in another copy to check determinism. The tests run in file order and build on each other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _project import copy_project

ROOT = Path(__file__).resolve().parents[1]
COPY = ["src", "Snakefile", "dvc.yaml", "params.yaml", "workflow", "conf", "data", ".dvc", ".gitignore", ".dvcignore"]
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
# As the README says to call Snakemake after a checkout or pull: DVC restores contents, not timestamps
# nor Snakemake's own records (.snakemake/, unversioned), so once `dvc status` is clean, `--touch`
# re-aligns them; then a dry run with the default triggers must have nothing to do.
SNAKEMAKE_TOUCH = ["snakemake", "--touch", "--cores", "1", "--configfile", "params.yaml"]
SNAKEMAKE_AFTER_CHECKOUT = ["snakemake", "-n", "--cores", "all", "--configfile", "params.yaml"]
# Tables whose numbers must not depend on the run (timings, e.g. run.json's seconds, are left out).
METRIC_TABLES = ["runs/*/metrics.csv", "runs/*/train_log.csv", "base_eval/metrics.csv", "forecast/*.csv",
                 "steering/steering_metrics.csv", "icl/icl_metrics.csv", "report/study_metrics.csv"]
TIMING_COLUMNS = {"seconds", "s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out",
                  "mean_load", "cpu_time", "reply_tokens_per_s"}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(cwd))
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def env(project: Path) -> dict[str, str]:
    """Each copy runs its own src/ (a snapshot), whatever is edited in the checkout meanwhile."""
    root = next(p for p in [project, *project.parents] if (p / "src" / "phaseflip").is_dir())
    return {**os.environ, "PYTHONPATH": str(root / "src")}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def state(project: Path) -> dict[str, dict[str, str]]:
    """Everything a checkout must restore: data, adapters and results (and the params that made them)."""
    return {"data": tree_hashes(project / "data"), "results": tree_hashes(project / "results"),
            "params": {"params.yaml": hashlib.sha256((project / "params.yaml").read_bytes()).hexdigest()}}


def metric_tables(results: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for pattern in METRIC_TABLES:
        for path in sorted(results.glob(pattern)):
            frame = pd.read_csv(path)
            tables[str(path.relative_to(results))] = frame.drop(columns=[c for c in frame if c in TIMING_COLUMNS])
    return tables


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A git + DVC copy of the project where the smoke study ran via `dvc exp run -S` and was committed."""
    snapshot = copy_project(tmp_path_factory.mktemp("snapshot"), COPY)
    project = copy_project(tmp_path_factory.mktemp("history") / "project", COPY, source=snapshot)
    (project / ".dvc" / "config.local").unlink(missing_ok=True)  # the project's remote: ../dvc_remote
    run(["git", "init", "-q"], project)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "project"], project)
    run(["dvc", "exp", "run", "-S", "study=smoke"], project)
    run([*GIT, "add", "dvc.lock", "params.yaml"], project)
    run([*GIT, "commit", "-qm", "smoke study"], project)
    first = run(["git", "rev-parse", "HEAD"], project).strip()
    return {"path": project, "snapshot": snapshot, "first": first, "state": state(project)}


@pytest.mark.integration
def test_second_repro_does_nothing(repo: dict) -> None:
    project = repo["path"]
    out = run(["dvc", "repro"], project)
    assert "didn't change, skipping" in out or "up to date" in out, out
    assert "Nothing to be done" in run(SNAKEMAKE_AFTER_CHECKOUT, project)
    assert state(project) == repo["state"]


@pytest.mark.integration
def test_same_config_from_scratch_gives_identical_metric_tables(repo: dict,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    other = copy_project(tmp_path_factory.mktemp("again"), COPY, source=repo["snapshot"])
    run(["snakemake", "--cores", "all", "--config", "study=smoke"], other)
    first, second = metric_tables(repo["path"] / "results"), metric_tables(other / "results")
    assert first.keys() == second.keys() and len(first) >= 8, sorted(first)
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], check_exact=True, obj=name)
    # Byte-identical artefacts too: the base model, data, dreams, steering vector and every adapter.
    same = ["base_model/model.safetensors", "corrections/train.jsonl", "dreams/dreams.jsonl",
            "steering/vector.safetensors"]
    same += [str(p.relative_to(other / "results")) for p in (other / "results").glob("runs/*/checkpoints/*/*")]
    for rel in same:
        assert (repo["path"] / "results" / rel).read_bytes() == (other / "results" / rel).read_bytes(), rel


@pytest.mark.integration
def test_history_sweep_commit_checkout_restores_the_first_run(repo: dict) -> None:
    project = repo["path"]
    run(["dvc", "exp", "run", "-S", "study=smoke", "-S", "train.lrs=[0.003]"], project)
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lrs"] == [0.003]
    assert (project / "results/runs/lr3e-03_nall_k0_s0/checkpoints/step-0004/adapter_model.safetensors").is_file()
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    assert "train.lrs" in shown
    run([*GIT, "add", "dvc.lock", "params.yaml"], project)
    run([*GIT, "commit", "-qm", "lr 3e-3"], project)
    second = state(project)
    assert second != repo["state"]

    run(["git", "checkout", "-q", repo["first"]], project)
    run(["dvc", "checkout", "--force"], project)
    assert state(project) == repo["state"]  # data, adapters, results: byte for byte the first run's

    run(["git", "checkout", "-q", "-"], project)  # and forward again
    run(["dvc", "checkout", "--force"], project)
    assert state(project) == second
    run(["git", "checkout", "-q", repo["first"]], project)
    run(["dvc", "checkout", "--force"], project)
    assert state(project) == repo["state"]
    assert "up to date" in run(["dvc", "status"], project)
    run(SNAKEMAKE_TOUCH, project)
    assert "Nothing to be done" in run(SNAKEMAKE_AFTER_CHECKOUT, project)
    assert state(project) == repo["state"]  # touching changed timestamps only


@pytest.mark.integration
def test_local_remote_push_delete_pull_restores_results(repo: dict) -> None:
    project = repo["path"]
    config = (project / ".dvc" / "config").read_text()
    assert "remote = local" in config and "url = ../dvc_remote" in config
    run(["dvc", "push"], project)  # no cloud: the project's local directory remote
    assert any((project / "dvc_remote").rglob("*"))  # a relative url is relative to .dvc/
    shutil.rmtree(project / "results")
    shutil.rmtree(project / ".dvc" / "cache")
    assert "Nothing to be done" not in subprocess.run(SNAKEMAKE_AFTER_CHECKOUT, cwd=project, capture_output=True,
                                                       text=True, env=env(project)).stdout
    run(["dvc", "pull"], project)
    assert state(project) == repo["state"]
    assert "up to date" in run(["dvc", "status"], project)
    run(SNAKEMAKE_TOUCH, project)
    assert "Nothing to be done" in run(SNAKEMAKE_AFTER_CHECKOUT, project)
