"""Reproducibility, experiment history and DVC as a user meets it (README "DVC" and "Experiment history"), end to end
in temporary git repositories.

One smoke study runs the README's way (`make study SET=study=smoke`, i.e. through `dvc exp run`) in a
temp git repo, shared by every test here; a second runs from scratch with plain Snakemake in another
copy, to check determinism and that `dvc commit` records such a run. The tests run in file order and
build on each other.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _project import copy_project

ROOT = Path(__file__).resolve().parents[2]
COPY = ["src", "Snakefile", "dvc.yaml", "params.yaml", "workflow", "conf", "data", ".dvc", ".gitignore", ".dvcignore",
        "Makefile", "pyproject.toml"]
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
# As the README says to call Snakemake after a checkout or pull: DVC restores contents, not timestamps
# nor Snakemake's own records (.snakemake/, unversioned), so once `dvc status` is clean, `--touch`
# re-aligns them; then a dry run with the default triggers must have nothing to do.
SNAKEMAKE_TOUCH = ["snakemake", "--touch", "--cores", "1", "--configfile", "params.yaml"]
SNAKEMAKE_AFTER_CHECKOUT = ["snakemake", "-n", "--cores", "all", "--configfile", "params.yaml"]
# Tables whose numbers must not depend on the run (timings, e.g. run.json's seconds, are left out).
METRIC_TABLES = ["runs/*/metrics.csv", "runs/*/train_log.csv", "base_eval/metrics.csv", "forecast/*.csv",
                 "steering/steering_metrics.csv", "icl/icl_metrics.csv", "report/study_metrics.csv"]
# the smoke study's negative control run: at the grid's main lr (the pilot's fallback, 1e-2)
CONTROL = "control-own-replies_lr1e-02_nall_k0_s0"
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


def mark_installed(project: Path) -> None:
    """`make study` depends on `make install`; the test environment is installed already, and a pip
    install from the copy would repoint the editable install at a temp folder. A stamp newer than
    pyproject.toml tells make there is nothing to install."""
    stamp = project / ".installed"
    stamp.touch()
    newer = (project / "pyproject.toml").stat().st_mtime + 60
    os.utime(stamp, (newer, newer))


def experiment_name(output: str) -> str:
    """The name `dvc exp run` or `dvc exp save` (`make study`) gives its experiment."""
    found = re.findall(r"(?:Ran experiment\(s\)|Experiment has been saved as): (\S+)", output)
    assert found, output
    return found[-1]


def dvc_plot_definitions(project: Path) -> tuple[dict[str, dict], list[str]]:
    """dvc.yaml's curves (id -> definition) and images (paths)."""
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    curves = {next(iter(p)): next(iter(p.values())) for p in plots if isinstance(p, dict)}
    images = [p for p in plots if isinstance(p, str)]
    return curves, images


def curve_values(shown: dict, curve: str, definition: dict) -> list[dict]:
    """The data points `dvc plots show/diff --json` gives a curve, with a value for its y field."""
    (renderer,) = shown["data"][curve]
    assert renderer["type"] == "vega", renderer
    (y,) = definition["y"].values()
    return [v for v in renderer["content"]["data"]["values"] if v.get(y) not in (None, "")]


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
    """A git + DVC copy of the project where the smoke study ran the README's way and was committed."""
    snapshot = copy_project(tmp_path_factory.mktemp("snapshot"), COPY)
    project = copy_project(tmp_path_factory.mktemp("history") / "project", COPY, source=snapshot)
    (project / ".dvc" / "config.local").unlink(missing_ok=True)  # the project's remote: ../dvc_remote
    run(["git", "init", "-q"], project)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "project"], project)
    mark_installed(project)
    made = run(["make", "study", "SET=study=smoke"], project)  # the README's main command, smoke preset
    # Right after the main command, before anything else touches the workspace (the commit below moves
    # HEAD, and `dvc exp show` lists the experiments of HEAD).
    status = run(["dvc", "status"], project)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    run([*GIT, "add", "dvc.lock", "params.yaml"], project)
    run([*GIT, "commit", "-qm", "smoke study"], project)
    first = run(["git", "rev-parse", "HEAD"], project).strip()
    return {"path": project, "snapshot": snapshot, "first": first, "state": state(project),
            "experiment": experiment_name(made), "status": status, "exp_show": shown}


@pytest.fixture(scope="module")
def plain(repo: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy where the same smoke study ran through plain Snakemake, outside DVC."""
    other = copy_project(tmp_path_factory.mktemp("again"), COPY, source=repo["snapshot"])
    run(["git", "init", "-q"], other)
    run([*GIT, "add", "-A"], other)
    run([*GIT, "commit", "-qm", "project"], other)
    run(["snakemake", "--cores", "all", "--config", "study=smoke"], other)
    return other


@pytest.mark.integration
def test_main_command_leaves_dvc_up_to_date(repo: dict) -> None:
    assert "Data and pipelines are up to date." in repo["status"], repo["status"]
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(repo["exp_show"]))}
    experiment = rows[repo["experiment"]]  # with its metrics (results/report/metrics.json) as DVC recorded them
    assert experiment["runs"] == "2" and experiment["runs_flipped"] not in ("", "!"), experiment


@pytest.mark.integration
def test_plots_show_renders_every_curve_and_image(repo: dict, tmp_path: Path) -> None:
    project = repo["path"]
    out = run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    assert "failed to load" not in out.lower(), out
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "failed to load" not in html.lower()
    specs = {spec["title"]: spec for spec in map(json.loads, re.findall(r"var spec = (\{.*\});", html))}
    curves, images = dvc_plot_definitions(project)
    assert len(curves) >= 5 and len(images) >= 8
    for curve, definition in curves.items():  # a Vega spec holding this curve's data, one line per run
        (y,) = definition["y"].values()
        values = [v for v in specs[curve]["data"]["values"] if v.get(y) not in (None, "")]
        assert {v["run_id"] for v in values} == {"lr1e-02_nall_k0_s0", CONTROL}, curve
        assert specs[curve]["encoding"]["color"]["field"] == "run_id", curve
    for image in images:
        name = image.replace("/", "_")
        assert f'<img src="static/workspace_{name}">' in html, image
        assert (tmp_path / "plots" / "static" / f"workspace_{name}").stat().st_size > 1000, image
    shown = json.loads(run(["dvc", "plots", "show", "--json"], project))
    assert not shown.get("errors"), shown["errors"]
    for curve, definition in curves.items():
        assert curve_values(shown, curve, definition), curve


@pytest.mark.integration
def test_second_repro_does_nothing(repo: dict) -> None:
    project = repo["path"]
    out = run(["dvc", "repro"], project)
    assert "didn't change, skipping" in out or "up to date" in out, out
    assert "Nothing to be done" in run(SNAKEMAKE_AFTER_CHECKOUT, project)
    assert state(project) == repo["state"]


@pytest.mark.integration
def test_same_config_from_scratch_gives_identical_metric_tables(repo: dict, plain: Path) -> None:
    other = plain
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
def test_plain_snakemake_run_is_recorded_by_dvc_commit(plain: Path) -> None:
    """The README's one command for a study run outside DVC: params.yaml must be the config it ran with."""
    composed = subprocess.run(["python", "-m", "phaseflip.config", "study=smoke"], cwd=plain, capture_output=True,
                              text=True, env=env(plain), check=True)
    (plain / "params.yaml").write_text(composed.stdout)
    assert "up to date" not in run(["dvc", "status"], plain)
    run(["dvc", "commit", "-f"], plain)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], plain)
    curves, _ = dvc_plot_definitions(plain)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], plain))
    assert not shown.get("errors") and all(curve_values(shown, c, d) for c, d in curves.items())


def benchmark_files(project: Path) -> dict[str, tuple[int, bytes]]:
    """Each finished job's Snakemake benchmark file (written when the job ends): its mtime and bytes."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (project / "results" / "benchmarks").glob("*.tsv")}


def finished_benchmarks(log: str) -> set[str]:
    """The benchmark files of the jobs Snakemake's log reports finished ("Finished jobid: N"). A job killed
    after its benchmark file was written but before Snakemake recorded it as finished is still marked
    incomplete, and `--rerun-incomplete` rightly runs it again: it was not finished work."""
    benchmark_of: dict[str, str] = {}
    jobid = None
    for line in log.splitlines():
        if m := re.match(r"\s+jobid: (\d+)$", line):
            jobid = m.group(1)
        elif (m := re.match(r"\s+benchmark: (\S+)$", line)) and jobid is not None:
            benchmark_of[jobid] = Path(m.group(1)).name
    return {benchmark_of[j] for j in re.findall(r"Finished jobid: (\d+)", log) if j in benchmark_of}


def kill_study_during_training(project: Path, log: Path) -> str:
    """Start `make study SET=study=smoke` in its own process group, wait until a training run has saved
    its first checkpoint but not finished, then SIGKILL the whole group (a closed laptop, a pre-empted
    node: nothing gets to clean up). Returns the interrupted run's id."""
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "study", "SET=study=smoke"], cwd=project, env=env(project), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                started = [p.parents[1] for p in (project / "results" / "runs").glob("*/checkpoints/step-0002")]
                running = [r for r in started
                           if not (r / "run.json").exists() and not (r / "checkpoints" / "step-0004").exists()]
                if running:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return running[0].name
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    raise AssertionError(f"no training run was caught between its checkpoints:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def interrupted(repo: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A git copy where `make study SET=study=smoke` was killed (SIGKILL to its process group) while a
    training run was between checkpoints, then run again the same way to the end."""
    project = copy_project(tmp_path_factory.mktemp("interrupted") / "project", COPY, source=repo["snapshot"])
    (project / ".dvc" / "config.local").unlink(missing_ok=True)
    run(["git", "init", "-q"], project)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "project"], project)
    mark_installed(project)
    run_id = kill_study_during_training(project, project.parent / "first.log")
    finished = finished_benchmarks((project.parent / "first.log").read_text())
    before = {name: v for name, v in benchmark_files(project).items() if name in finished}
    rerun = run(["make", "study", "SET=study=smoke"], project)
    return {"path": project, "run_id": run_id, "before": before, "after": benchmark_files(project), "rerun": rerun}


@pytest.mark.integration
def test_interrupted_main_command_keeps_finished_jobs_and_resumes_training(interrupted: dict, plain: Path) -> None:
    project, before, after = interrupted["path"], interrupted["before"], interrupted["after"]
    # (a) Every job that had finished before the kill kept its output: not rerun (same benchmark file).
    assert {"base_model.tsv", "corrections.tsv", "dreams.tsv"} <= before.keys(), sorted(before)
    assert all(after[name] == before[name] for name in before), [n for n in before if after[n] != before[n]]
    assert f"train_{interrupted['run_id']}.tsv" not in before and f"train_{interrupted['run_id']}.tsv" in after
    # (b) The killed training run continued from its last checkpoint instead of starting again.
    info = json.loads((project / "results" / "runs" / interrupted["run_id"] / "run.json").read_text())
    assert info["resumed_from"] == 2, info
    # (c) The finished study equals an uninterrupted one, byte for byte in every metric table.
    first, second = metric_tables(project / "results"), metric_tables(plain / "results")
    assert first.keys() == second.keys() and len(first) >= 8, sorted(first)
    for name, table in first.items():
        pd.testing.assert_frame_equal(table, second[name], check_exact=True, obj=name)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project)


@pytest.mark.integration
@pytest.mark.parametrize(("override", "reran"), [
    ("steering.screen.max_scenarios=3", {"steering"}),
    ("icl.ks=[0]", {"icl"}),
    ("steering.multipliers=[-2.0,2.0]", {"steering"}),
    ("forecast.n_bootstrap=30", {"forecast", "forecast_bench"}),
])
def test_one_stage_override_reruns_only_that_stage(interrupted: dict, override: str, reran: set[str]) -> None:
    """Through Snakemake as the DVC stage calls it: only the stage the override concerns (and the report,
    which reads every stage) is planned."""
    project = interrupted["path"]
    key, value = override.split("=", 1)
    dry = run(["snakemake", "-n", "--rerun-triggers", "mtime", "params", "input", "--config", "study=smoke",
               f"{key.replace('.', '__')}={value}"], project)
    planned = set(re.findall(r"\b(?:local)?rule (\w+):", dry)) - {"all"}  # `all` is the target, not a job
    assert planned == reran | {"report"}, (override, planned)


@pytest.mark.integration
def test_one_stage_override_through_make_and_dvc_exp_run(interrupted: dict) -> None:
    """For real: `make study SET=...` and then `dvc exp run -S ...`, each with one stage's option changed,
    rerun that stage (and the report) and leave every other job's output as it was."""
    project = interrupted["path"]
    before = benchmark_files(project)
    run(["make", "study", "SET=study=smoke steering.screen.max_scenarios=3"], project)
    middle = benchmark_files(project)
    assert {n for n in before if middle[n] != before[n]} == {"steering.tsv"}
    run(["dvc", "exp", "run", "-S", "study=smoke", "-S", "steering.screen.max_scenarios=3", "-S", "icl.ks=[0]"],
        project)
    after = benchmark_files(project)
    assert {n for n in middle if after[n] != middle[n]} == {"icl.tsv"}


@pytest.mark.integration
def test_history_sweep_commit_checkout_restores_the_first_run(repo: dict) -> None:
    project = repo["path"]
    second_experiment = experiment_name(run(["dvc", "exp", "run", "-S", "study=smoke", "-S", "train.lrs=[0.003]"],
                                            project))
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lrs"] == [0.003]
    assert (project / "results/runs/lr3e-03_nall_k0_s0/checkpoints/step-0004/adapter_model.safetensors").is_file()
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    assert "train.lrs" in shown
    # `dvc plots diff` of the two experiments: every curve holds both, each with its own grid's runs.
    revs = [repo["experiment"], second_experiment]
    diff = json.loads(run(["dvc", "plots", "diff", *revs, "--json"], project))
    assert not diff.get("errors"), diff["errors"]
    for curve, definition in dvc_plot_definitions(project)[0].items():
        values = curve_values(diff, curve, definition)
        for rev, lr_run in zip(revs, ["lr1e-02_nall_k0_s0", "lr3e-03_nall_k0_s0"], strict=True):
            control = f"control-own-replies_{lr_run}"  # each grid's control trains at its main lr
            assert {v["run_id"] for v in values if v["rev"] == rev} == {lr_run, control}, (curve, rev)
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
