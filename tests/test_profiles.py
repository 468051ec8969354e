"""Scale-out: the SLURM profile resolves every job's resources, threads reach torch, dtype/device choice."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _project import copy_project

from phaseflip.dag import RULES
from phaseflip.io import pick_device
from phaseflip.model import base_model

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
COPY = ["src", "Snakefile", "workflow", "conf", "data"]
GPU_RULES = {"corrections", "steering_vectors", "steering", "icl", "evaluate_base", "pilot", "train", "evaluate"}
JOB_RULES = set(RULES)  # every rule of the stage table (phaseflip.dag)


def _snakemake(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy (no results/): every job of the smoke study appears in a dry run."""
    return copy_project(tmp_path_factory.mktemp("project"), COPY)


def parse_jobs(dry_run: str) -> list[dict[str, str]]:
    """One dict per job of `snakemake -n -p` output: rule, resources (as k=v), threads from the shell line."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?(?:rule|checkpoint) )", dry_run):
        match = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if not match:
            continue
        job: dict[str, str] = {"rule": match.group(1)}
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if res:
            job.update(kv.split("=", 1) for kv in res.group(1).split(", "))
        threads = re.search(r"--threads (\d+)", block)
        if threads:
            job["threads"] = threads.group(1)
        jobs.append(job)
    return jobs


def test_parse_jobs_reads_resources_and_threads() -> None:
    text = ("[Sun Nov 22 06:31:42 2026]\nrule train:\n    jobid: 7\n    resources: tmpdir=/tmp, mem_mb=16000, gpu=1\n"
            "Shell command: python -m phaseflip.cli train --threads 4 --out x\n\n"
            "[Sun Nov 22 06:31:43 2026]\nlocalrule all:\n    resources: tmpdir=/tmp\n")
    assert parse_jobs(text) == [{"rule": "train", "tmpdir": "/tmp", "mem_mb": "16000", "gpu": "1", "threads": "4"},
                                {"rule": "all", "tmpdir": "/tmp"}]


def test_slurm_profile_names_every_rule_and_a_gpu_per_model_job() -> None:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    text = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    rules = set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.M))
    assert rules == JOB_RULES, "a new rule needs its resources in workflow/profiles/slurm/config.yaml"
    assert set(profile["set-resources"]) == rules
    for rule, res in profile["set-resources"].items():
        assert res["mem_mb"] > 0 and res["runtime"] > 0, rule
        assert res.get("gpu", 0) == (1 if rule in GPU_RULES else 0), rule
        assert res.get("cpus_per_task", 1) == profile["set-threads"].get(rule, 1), rule


@pytest.mark.integration
def test_slurm_dry_run_resolves_every_jobs_resources(project: Path) -> None:
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    # Under the smoke preset's `lrs: auto` the grid's jobs are known only once the pilot has run, so a dry
    # run lists the pilot and not them; with a grid given, no pilot and every grid job.
    auto = _snakemake(["-n", "-p", "--profile", str(PROFILE), "--config", "study=smoke"], project)
    given = _snakemake(["-n", "-p", "--profile", str(PROFILE), "--config", "study=smoke", "train__lrs=[0.01]",
                        "train__checkpoint_steps=[2,4]"], project)
    for proc in (auto, given):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = [j for j in parse_jobs(auto.stdout + auto.stderr) if j["rule"] != "all"]
    assert "pilot" in {j["rule"] for j in jobs} and "train" not in {j["rule"] for j in jobs}
    grid_jobs = [j for j in parse_jobs(given.stdout + given.stderr) if j["rule"] != "all"]
    assert {j["rule"] for j in grid_jobs} == JOB_RULES - {"pilot"}
    assert sum(j["rule"] == "train" for j in grid_jobs) == 2  # one job per grid point (smoke: 1 lr + control)
    jobs += grid_jobs
    for job in jobs:
        rule, want = job["rule"], profile["set-resources"][job["rule"]]
        assert job.get("mem_mb") == str(want["mem_mb"]), job
        assert job.get("runtime") == str(want["runtime"]), job
        assert job.get("gpu") == ("1" if rule in GPU_RULES else None), job
        assert job.get("cpus_per_task") == str(want.get("cpus_per_task", 1)), job
        if "threads" in job:  # torch threads = the cluster job's CPUs
            assert job["threads"] == str(profile["set-threads"][rule]), job


@pytest.mark.integration
def test_slurm_submission_without_cores_builds_the_sbatch_call(project: Path, tmp_path: Path) -> None:
    """A real (not dry) run against a fake sbatch: the profile parses without --cores and the first job's
    resources reach sbatch. The fake refuses the job, so nothing runs."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch_calls.txt"
    bin_dir.mkdir()
    scripts = {"sbatch": f'echo "$@" >> {record}\necho "sbatch: error: fake cluster" >&2\nexit 1'}
    scripts.update({tool: "exit 0" for tool in ("sacct", "squeue", "sinfo", "sacctmgr", "scontrol")})  # queries
    for tool, body in scripts.items():
        fake = bin_dir / tool
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = _snakemake(["--profile", str(PROFILE), "--config", "study=smoke", "--slurm-no-account"], project, env)
    output = proc.stdout + proc.stderr
    assert "Workflow requires a total number of cores" not in output
    assert record.is_file(), output[-3000:]
    call = record.read_text()
    base = profile_resources("base_model")
    assert f"--mem {base['mem_mb']}" in call and f"-t {base['runtime']}" in call, call
    assert f"--cpus-per-task={base['cpus_per_task']}" in call, call


def profile_resources(rule: str) -> dict[str, int]:
    return dict(yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"][rule])


@pytest.mark.integration
def test_local_dry_run_runs_grid_points_side_by_side(project: Path) -> None:
    """--cores N: per-run jobs keep their own (small) thread count, so N of them fit side by side."""
    auto = _snakemake(["-n", "-p", "--cores", "4", "--config", "study=smoke"], project)
    proc = _snakemake(["-n", "-p", "--cores", "4", "--config", "study=smoke", "train__lrs=[0.01]",
                       "train__checkpoint_steps=[2,4]"], project)  # a given grid: its jobs are in the dry run
    assert proc.returncode == auto.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    threads = {j["rule"]: int(j["threads"]) for j in parse_jobs(proc.stdout + proc.stderr) if "threads" in j}
    threads |= {j["rule"]: int(j["threads"]) for j in parse_jobs(auto.stdout + auto.stderr) if j["rule"] == "pilot"}
    assert threads["train"] == threads["evaluate"] == 1
    assert threads["pilot"] == 2  # a stage job: it runs beside the baselines while the grid waits on it
    # stage jobs: half the cores (dreams too, so evaluate_base runs beside it); the base model and the
    # corrections, which everything waits on (nothing can run beside them): all of them
    assert threads["steering_vectors"] == threads["steering"] == threads["icl"] == threads["evaluate_base"] == 2
    assert threads["dreams"] == 2
    assert threads["base_model"] == threads["corrections"] == 4


@pytest.mark.parametrize("threads", [1, 3])
def test_cli_threads_reach_torch(threads: int) -> None:
    """The CLI's --threads sets torch's intra- and inter-op pools and the BLAS/OpenMP variables (fresh process,
    as Snakemake runs it: inter-op threads can only be set before any parallel work)."""
    code = ("import os, json, torch; from phaseflip import cli; "
            f"cli.start('{{\"seed\": 0}}', {threads}); "
            "print(json.dumps([torch.get_num_threads(), torch.get_num_interop_threads(), "
            "os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], os.environ['RAYON_NUM_THREADS']]))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == f'[{threads}, {threads}, "{threads}", "{threads}", "{threads}"]'


def _gpu(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu(monkeypatch, True, True)
    assert pick_device("auto").type == "cuda"
    assert pick_device("cpu").type == "cpu"
    _gpu(monkeypatch, False, False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(base_model.DataError, match="CUDA is not available"):
        pick_device("cuda")


def test_load_uses_the_resolved_dtype(tiny_model_dir: Path) -> None:
    model, _ = base_model.load(tiny_model_dir)  # manifest's model.dtype (auto) on CPU
    assert next(model.parameters()).dtype == torch.float32
    model, _ = base_model.load(tiny_model_dir, dtype="bfloat16", allow_emulated_bfloat16=True)
    assert next(model.parameters()).dtype == torch.bfloat16
