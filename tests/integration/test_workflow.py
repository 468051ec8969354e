"""End to end: the smoke study through Snakemake and DVC in a temporary copy of the project."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _project import copy_project

from phaseflip.config import compose
from phaseflip.dag import RULES

ROOT = Path(__file__).resolve().parents[2]
COPY = ["src", "Snakefile", "dvc.yaml", "params.yaml", "workflow", "conf", "data", ".dvc", ".gitignore", ".dvcignore"]


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = copy_project(tmp_path_factory.mktemp("project"), COPY)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], dest)
    return dest


@pytest.mark.integration
def test_dry_run_lists_every_stage(project: Path) -> None:
    # Under the smoke preset's `lrs: auto` the pilot (a checkpoint) comes first and the grid's jobs are known
    # once it has run; with a grid given, the dry run lists them and no pilot.
    auto = run(["snakemake", "-n", "--config", "study=smoke"], project)
    given = run(["snakemake", "-n", "--config", "study=smoke", "train__lrs=[0.01]", "train__checkpoint_steps=[2,4]"],
                project)
    for stage in RULES:
        out = given if stage in ("train", "evaluate") else auto
        assert f"rule {stage}:" in out or f"checkpoint {stage}:" in out, stage  # also localrule/localcheckpoint
    assert "checkpoint pilot:" not in given and "rule pilot:" not in given


@pytest.mark.integration
def test_bad_override_fails_before_any_job(project: Path) -> None:
    proc = subprocess.run(["snakemake", "-n", "--config", "study=smoke", "train__lrs=[-1]"], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "every learning rate must be > 0" in proc.stdout + proc.stderr


@pytest.mark.integration
def test_smoke_study_via_dvc_exp_run_then_repro_is_a_no_op(project: Path) -> None:
    run(["dvc", "exp", "run", "-S", "study=smoke"], project)
    assert yaml.safe_load((project / "params.yaml").read_text()) == compose(["study=smoke"])
    results = project / "results"
    summary = (results / "report" / "summary.md").read_text()
    assert "study `smoke`" in summary and "Base model (step 0)" in summary
    for png in ["curves", "all_metrics", "phase_diagram", "dreams", "steering", "icl", "families", "forecast"]:
        assert (results / "report" / f"{png}.png").stat().st_size > 1000
    table = pd.read_csv(results / "report" / "study_metrics.csv")
    for metric in ["margin", "p_preferred", "behavior_rate", "forced_choice", "heldout_loss", "coherence",
                   "retention_kl", "retention_loss", "dissimilarity", "steering_cosine"]:
        assert metric in set(table.metric), metric
    # the smoke preset runs the pilot path: nothing moves on a random model, so the grid falls back to the
    # probe's lr, and the checkpoints it placed are the ones evaluated (adapters saved at every step)
    grid = json.loads((results / "pilot" / "grid.json").read_text())
    assert grid["chosen_by"] == "fallback" and grid["lrs"] == [0.01] and grid["checkpoint_steps"][-1] == 4
    assert set(table.step) == {0, *grid["checkpoint_steps"]} and len(grid["checkpoint_steps"]) == 2
    assert "## The grid: chosen by the pilot" in (results / "report" / "summary.md").read_text()
    assert list(results.glob("runs/*/checkpoints/step-0004/adapter_model.safetensors"))
    # Nothing changed: DVC skips the stage, and Snakemake (as the README calls it) has nothing to do.
    again = run(["dvc", "repro"], project)
    assert "didn't change, skipping" in again or "up to date" in again
    dry = run(["snakemake", "-n", "--configfile", "params.yaml", "--rerun-triggers", "mtime", "params", "input"],
              project)
    assert "Nothing to be done" in dry
    # A new grid point reruns only that point (plus the study-wide forecast and report): finished runs'
    # jobs carry the training recipe, not the grid, and the pilot reads no grid point but the lrs, so
    # neither its grid.json nor the finished runs change.
    dry = run(["snakemake", "-n", "--config", "study=smoke", "train__seeds=[0,1]"], project)
    assert "run_id=lr1e-02_nall_k0_s1" in dry and "rule pilot" not in dry and "checkpoint pilot" not in dry
    assert "run_id=lr1e-02_nall_k0_s0" not in dry and "run_id=control" not in dry, dry[-3000:]


@pytest.mark.integration
def test_smoke_study_on_the_second_behavior(tmp_path: Path) -> None:
    """`--config behavior=formal`: no vocabulary, no reference replies, chat retention; the study runs through
    and its data report says how many scenarios got generated reference pairs."""
    dest = copy_project(tmp_path, COPY)
    run(["snakemake", "--cores", "2", "--config", "study=smoke", "behavior=formal"], dest)
    data = yaml.safe_load((dest / "results" / "corrections" / "data_report.json").read_text())
    refs = data["references"]
    assert refs["needing_pairs"] == refs["scenarios"] == data["eval"] >= 60
    assert refs["with_pair"] + len(refs["without_pair"]) == refs["scenarios"]
    summary = (dest / "results" / "report" / "summary.md").read_text()
    assert "behavior `formal`" in summary and "Reference pairs:" in summary
    assert "alternatives" not in summary  # no listening prose
    dreams = yaml.safe_load((dest / "results" / "dreams" / "dream_report.json").read_text())
    assert dreams["generators"] == ["model"]
