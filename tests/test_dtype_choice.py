"""The compute dtype fits the machine: chosen with the CPU's and GPU's bfloat16 support mocked both ways."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from _project import copy_project

from phaseflip import dtype_choice
from phaseflip.config import ConfigError, compose, load_study_config, resolve_dtypes, validate
from phaseflip.io import DataError

ROOT = Path(__file__).resolve().parents[1]


def machine(monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, gpu: bool = False, gpu_bf16: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)


@pytest.mark.parametrize(("cpu_bf16", "gpu", "gpu_bf16", "device", "want"), [
    (False, False, False, "cpu", "float32"),    # AVX2-only CPU: bfloat16 would be emulated
    (True, False, False, "cpu", "bfloat16"),    # AVX512-BF16 / AMX: native
    (False, True, True, "cuda", "bfloat16"),    # Ampere or later
    (True, True, False, "cuda", "float32"),     # a GPU without bfloat16, whatever the CPU has
])
def test_auto_picks_bfloat16_only_where_native(monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, gpu: bool,
                                                gpu_bf16: bool, device: str, want: str) -> None:
    machine(monkeypatch, cpu_bf16, gpu, gpu_bf16)
    choice = dtype_choice.choose_dtype("auto", device)
    assert choice.name == want and choice.dtype == dtype_choice.DTYPES[want]
    assert ("natively" in choice.reason) == (want == "bfloat16"), choice.reason


def test_emulated_bfloat16_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cpu_bf16=False)
    with pytest.raises(DataError, match=r"model\.dtype=bfloat16 on this CPU.*allow_emulated_bfloat16=true"):
        dtype_choice.choose_dtype("bfloat16", "cpu")
    allowed = dtype_choice.choose_dtype("bfloat16", "cpu", allow_emulated=True)
    assert allowed.name == "bfloat16" and "EMULATED" in allowed.reason
    assert dtype_choice.choose_dtype("float32", "cpu").name == "float32"
    machine(monkeypatch, cpu_bf16=True)
    assert dtype_choice.choose_dtype("bfloat16", "cpu").name == "bfloat16"  # native: no flag needed


def test_bfloat16_on_a_gpu_without_it_is_refused_even_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cpu_bf16=True, gpu=True, gpu_bf16=False)
    with pytest.raises(DataError, match="does not support bfloat16"):
        dtype_choice.choose_dtype("bfloat16", "cuda", allow_emulated=True)


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_no_shipped_default_picks_an_emulated_dtype(monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool) -> None:
    """Every shipped model config and preset, on both kinds of CPU: each resolved dtype is native there."""
    machine(monkeypatch, cpu_bf16)
    models = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    presets = sorted(p.stem for p in (ROOT / "conf" / "study").glob("*.yaml"))
    with_path = ["model.path=/x"]  # model=local needs one
    cases = [[f"model={m}", *(with_path if m == "local" else [])] for m in models] + [[f"study={s}"] for s in presets]
    for overrides in cases:
        cfg = validate(compose(overrides))
        record, lines = resolve_dtypes(cfg)
        for key in ("model_dtype", "steering_screen_dtype"):
            assert record[key] == "float32" or cpu_bf16, (overrides, record)
        assert len(lines) == 2 and all("->" in line for line in lines)
    assert resolve_dtypes(load_study_config({}))[0]["model_dtype"] == ("bfloat16" if cpu_bf16 else "float32")


def test_a_compute_record_from_another_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cpu_bf16=True)
    cfg = load_study_config({})
    record, _ = resolve_dtypes(cfg)
    assert record == {"device": "cpu", "model_dtype": "bfloat16", "steering_screen_dtype": "bfloat16"}
    recorded = cfg.model_copy(update={"compute": record})
    assert resolve_dtypes(recorded)[0] == record  # same machine: fine
    machine(monkeypatch, cpu_bf16=False)
    with pytest.raises(ConfigError, match="composed on another machine"):
        resolve_dtypes(recorded)


def test_resolved_dtype_is_in_every_stage_params_and_the_manifest(tmp_path: Path) -> None:
    """The main command says the choice in the terminal, params.yaml records it for DVC, and Snakemake's
    dry run plans jobs whose params carry it (so another resolution reruns them)."""
    project = copy_project(tmp_path, ["src", "Snakefile", "workflow", "conf", "data", ".dvc"])
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    out = subprocess.run(["python", "-m", "phaseflip.config", "--write", "params.yaml", "study=smoke"], cwd=project,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "phaseflip: compute model.dtype=float32 -> float32" in out.stderr
    composed = yaml.safe_load((project / "params.yaml").read_text())
    assert composed["compute"]["model_dtype"] == "float32" and composed["compute"]["device"] == "cpu"
    dry = subprocess.run(["snakemake", "-n", "-p", "--configfile", "params.yaml"], cwd=project, capture_output=True,
                         text=True, env=env)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "phaseflip: compute steering.screen.dtype=float32" in dry.stdout + dry.stderr
    params = [json.loads(line.split("--params ", 1)[1].split(" --threads")[0].strip("'"))
              for line in dry.stdout.splitlines() if "phaseflip.cli base_model" in line]
    assert params and params[0]["compute"] == composed["compute"]


def test_manifest_records_the_resolved_dtype_and_why(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["dtype"] in dtype_choice.DTYPES and manifest["requested_dtype"] == "float32"
    assert manifest["dtype_reason"]
