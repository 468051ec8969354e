"""Robustness under faults (issue #7): a killed training job resumes, a corrupt or truncated output is
one clear error naming the file and the rule that wrote it, and an interrupted write leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from _project import copy_project
from safetensors.torch import load_file

from phaseflip import io
from phaseflip.cli import main
from phaseflip.config import load_study_config
from phaseflip.interventions.steering import vector_for_layer
from phaseflip.io import DataError, read_csv, read_json, read_jsonl, read_safetensors, write_csv, write_json
from phaseflip.model import base_model

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "lr1e-02_nall_k0_s0"


def smoke_params(**train: object) -> dict:
    cfg = load_study_config({"study": "smoke"}).model_dump(mode="json")
    cfg["train"].update(train)
    for key, rel in cfg["behavior"]["data"].items():
        cfg["behavior"]["data"][key] = str(ROOT / rel)
    return cfg


# --- (a) a training job killed mid-run resumes from its last checkpoint ----------------------------------


def train_cmd(params: dict, base: Path, dreams: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "phaseflip.cli", "train", "--params", json.dumps(params), "--threads", "1",
            "--base", str(base), "--corrections", str(ROOT / "data/behaviors/listening/corrections.jsonl"),
            "--dreams", str(dreams), "--retention", str(ROOT / "data/behaviors/listening/retention.jsonl"),
            "--run-id", RUN_ID, "--out", str(out)]


@pytest.mark.integration
def test_killed_training_resumes_from_last_checkpoint_and_matches(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = smoke_params(max_steps=12, checkpoint_steps=list(range(1, 13)))
    dreams = tmp_path / "dreams.jsonl"
    dreams.write_text("")
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    # Uninterrupted reference.
    done = subprocess.run(train_cmd(params, tiny_model_dir, dreams, tmp_path / "full"), capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    # Real kill (SIGKILL: no cleanup handlers run) once the first checkpoint is on disk.
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(params, tiny_model_dir, dreams, killed_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoints" / "step-0002").is_dir():
        assert proc.poll() is None, "the job ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [s for s in sorted(p.name for p in (killed_dir / "checkpoints").iterdir()) if s.startswith("step-")]
    complete = [s for s in left if not s.endswith(".tmp")]
    assert complete and complete[-1] != "step-0012", f"the kill came too late to test anything: {left}"
    assert not (killed_dir / "run.json").exists()  # the job's outputs do not look finished
    resumed_from = int(complete[-1].split("-")[1])

    again = subprocess.run(train_cmd(params, tiny_model_dir, dreams, killed_dir), capture_output=True, text=True,
                           env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    # The log (tqdm's first frame) starts at the resumed step, and run.json records it.
    assert f"| {resumed_from}/12 [" in again.stderr, again.stderr[:500]
    assert read_json(killed_dir / "run.json")["resumed_from"] == resumed_from
    final_full = load_file(str(tmp_path / "full/checkpoints/step-0012/adapter_model.safetensors"))
    final_resumed = load_file(str(killed_dir / "checkpoints/step-0012/adapter_model.safetensors"))
    assert final_full.keys() == final_resumed.keys()
    for key in final_full:
        assert torch.equal(final_full[key], final_resumed[key]), key
    log_full = pd.read_csv(tmp_path / "full/train_log.csv")
    log_resumed = pd.read_csv(killed_dir / "train_log.csv")
    pd.testing.assert_frame_equal(log_full, log_resumed)


@pytest.mark.integration
def test_corrupt_checkpoint_on_resume_is_one_line_naming_file_and_rule(tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    params = smoke_params()
    dreams = tmp_path / "dreams.jsonl"
    dreams.write_text("")
    out = tmp_path / "results" / "runs" / RUN_ID
    first = subprocess.run(train_cmd(params, tiny_model_dir, dreams, out), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    adapter = out / "checkpoints/step-0004/adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])  # truncated
    params["train"].update(max_steps=6, checkpoint_steps=[2, 4, 6])  # a longer schedule resumes from step 4
    proc = subprocess.run(train_cmd(params, tiny_model_dir, dreams, out), capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert str(adapter) in err and "truncated or corrupt" in err and "rule train" in err


# --- (b) corrupt or truncated outputs: one clear error naming the file and its rule ----------------------


def results_tree(tmp_path: Path) -> Path:
    """A minimal results/ layout, as the study writes it."""
    run = tmp_path / "results" / "runs" / RUN_ID
    run.mkdir(parents=True)
    write_json(run / "run.json", {"run_id": RUN_ID, "lr": 0.01, "n_real": "all", "dream_k": 0, "seed": 0,
                                  "control": False, "status": "completed", "last_good_step": 4})
    write_csv(run / "train_log.csv", pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.9], "grad_norm": [1.0, 1.0],
                                                   "lr": [0.01, 0.01]}))
    write_csv(run / "metrics.csv", pd.DataFrame({"step": [0, 2], "family": ["in_distribution"] * 2,
                                                 "metric": ["p_preferred"] * 2, "value": [0.1, 0.2]}))
    write_csv(run / "scenarios.csv", pd.DataFrame({"step": [0, 2], "scenario_id": ["e1"] * 2,
                                                   "family": ["in_distribution"] * 2, "margin": [0.1, 0.2],
                                                   "p_preferred": [0.5, 0.55], "behavior_k": [0, 1], "n": [2, 2]}))
    return tmp_path / "results"


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


CORRUPTIONS = {
    "truncated": truncate,
    "empty": lambda p: p.write_bytes(b""),
    "binary garbage": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", CORRUPTIONS)
@pytest.mark.parametrize(("name", "rule"), [("metrics.csv", "evaluate"), ("scenarios.csv", "evaluate"),
                                            ("run.json", "train"), ("train_log.csv", "train")])
def test_corrupt_run_table_stops_forecast_with_one_line(tmp_path: Path, capsys, damage: str, name: str,  # type: ignore[no-untyped-def]
                                                        rule: str) -> None:
    results = results_tree(tmp_path)
    run = results / "runs" / RUN_ID
    CORRUPTIONS[damage](run / name)
    code = main(["forecast", "--params", json.dumps(smoke_params()), "--run-dirs", str(run),
                 "--out", str(results / "forecast")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(run / name) in err and f"written by rule {rule}" in err, err
    assert not (results / "forecast").exists()


@pytest.mark.parametrize("damage", [
    "truncated", "binary garbage", "missing",
])
def test_corrupt_dreams_jsonl_stops_train_before_the_model_loads(tmp_path: Path, capsys, damage: str) -> None:  # type: ignore[no-untyped-def]
    dreams = tmp_path / "results" / "dreams" / "dreams.jsonl"
    dreams.parent.mkdir(parents=True)
    records = [{"id": f"d{i}", "messages": [{"role": "user", "content": "Use tabs."}], "preferred": "Understood.",
                "family": "in_distribution", "meta": {"parent": "c1"}} for i in range(3)]
    io.write_jsonl(dreams, records)
    CORRUPTIONS[damage](dreams)
    code = main(["train", "--params", json.dumps(smoke_params()), "--base", str(tmp_path / "no_model"),
                 "--corrections", str(ROOT / "data/behaviors/listening/corrections.jsonl"), "--dreams", str(dreams),
                 "--retention", str(ROOT / "data/behaviors/listening/retention.jsonl"), "--run-id", RUN_ID,
                 "--out", str(tmp_path / "results/runs" / RUN_ID)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(dreams) in err, err
    if damage == "truncated":  # (data.load_examples reports bad UTF-8 itself, by line, without the rule)
        assert "written by rule dreams" in err, err


def test_truncated_csv_without_final_newline_is_caught(tmp_path: Path) -> None:
    """Cut mid-row, a CSV still parses (the last row padded with NaN): the missing newline gives it away."""
    results = results_tree(tmp_path)
    metrics = results / "runs" / RUN_ID / "metrics.csv"
    text = metrics.read_text()
    metrics.write_text(text[: text.rindex(",")])
    with pytest.raises(DataError, match=r"metrics.csv: cannot read CSV table \(truncated.*rule evaluate"):
        read_csv(metrics)
    # A hand-written input (not a study output) may lack the final newline.
    data_csv = tmp_path / "table.csv"
    data_csv.write_text("a,b\n1,2")
    assert read_csv(data_csv).b.tolist() == [2]


def test_truncated_jsonl_names_line_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "results" / "corrections" / "train.jsonl"
    io.write_jsonl(path, [{"id": "a", "x": 1}, {"id": "b", "x": 2}])
    truncate(path, keep=len(path.read_bytes()) - 3)
    with pytest.raises(DataError, match=r"train.jsonl:2: truncated .*written by rule corrections"):
        read_jsonl(path)


@pytest.mark.parametrize("damage", CORRUPTIONS)
def test_corrupt_adapter_names_file_and_rule(tiny, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.interventions.train import add_lora, load_adapter_weights

    model, _ = tiny
    cfg = load_study_config({"study": "smoke"}).train
    wrapped = add_lora(model, cfg.lora)
    folder = tmp_path / "results" / "runs" / RUN_ID / "checkpoints" / "step-0004"
    folder.mkdir(parents=True)
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(wrapped).items()},
              str(folder / "adapter_model.safetensors"))
    load_adapter_weights(wrapped, folder)  # intact: fine
    CORRUPTIONS[damage](folder / "adapter_model.safetensors")
    with pytest.raises(DataError) as info:
        load_adapter_weights(wrapped, folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'adapter_model.safetensors'}: cannot read adapter")
    assert "rule train" in message and "\n" not in message
    assert ("file not found" if damage == "missing" else "truncated or corrupt") in message


@pytest.mark.parametrize("damage", ["truncated", "empty", "binary garbage"])
def test_corrupt_steering_vector_names_file_and_rule(tmp_path: Path, damage: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "results" / "steering" / "vector.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"layer_0": torch.ones(8), "layer_1": torch.ones(8)}, str(path), metadata={"layer_type": "decoder_block"})
    assert torch.equal(vector_for_layer(path, 1), torch.ones(8))
    CORRUPTIONS[damage](path)
    with pytest.raises(DataError, match=r"vector.safetensors: cannot read steering vector: truncated or corrupt "
                                        r"safetensors file \(written by rule steering_vectors; delete it and rerun\)"):
        vector_for_layer(path, 1)


def test_writer_of_maps_outputs_to_rules(tmp_path: Path) -> None:
    cases = {
        "results/base_model/model.safetensors": "base_model",
        "results/corrections/eval.jsonl": "corrections",
        "results/dreams/dream_report.json": "dreams",
        "results/steering/steering_metrics.csv": "steering",
        "results/steering/vector_real_and_dreams.safetensors": "steering_vectors",
        "results/icl/icl_metrics.csv": "icl",
        "results/base_eval/metrics.csv": "evaluate_base",
        f"results/runs/{RUN_ID}/metrics.csv": "evaluate",
        f"results/runs/{RUN_ID}/checkpoints/step-0004/optimizer.safetensors": "train",
        f"results/runs/{RUN_ID}/run.json": "train",
        "results/forecast/forecasts.csv": "forecast",
        "results/report/study_metrics.csv": "report",
        "elsewhere/adapter_model.safetensors": "train",
    }
    for rel, rule in cases.items():
        assert io.writer_of(tmp_path / rel) == rule, rel
    assert io.writer_of("data/behaviors/listening/eval.jsonl") is None


# --- (c) an interrupted write leaves no file -------------------------------------------------------------


def test_interrupted_csv_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = pd.DataFrame.to_csv

    def half_then_die(self: pd.DataFrame, path: object, **kwargs: object) -> None:
        original(self.head(1), path, **kwargs)  # type: ignore[call-overload]
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_csv(tmp_path / "metrics.csv", pd.DataFrame({"a": range(100)}))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_json_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert read_json(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def _dying_save_file(calls_before_death: int):  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file as real

    calls = {"n": 0}

    def fake(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        calls["n"] += 1
        if calls["n"] > calls_before_death:
            Path(filename).write_bytes(b"partial")
            raise KeyboardInterrupt
        real(tensors, filename, metadata=metadata)

    return fake


def test_interrupted_vector_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steering_vectors import SteeringVector

    from phaseflip.interventions import steering

    monkeypatch.setattr(steering, "save_file", _dying_save_file(0))
    with pytest.raises(KeyboardInterrupt):
        steering.save_vector(SteeringVector({0: torch.ones(4)}, "decoder_block"), tmp_path / "vector.safetensors", {})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_checkpoint_write_leaves_no_checkpoint(tiny, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from phaseflip.data import Example
    from phaseflip.interventions import train

    model, tok = tiny
    examples = [Example(id=f"c{i}", messages=[{"role": "user", "content": f"Task {i}"}], preferred="Understood.")
                for i in range(2)]
    cfg = load_study_config({"study": "smoke"}).train.model_copy(update={"max_steps": 4, "checkpoint_steps": [2, 4]})
    monkeypatch.setattr(train, "save_file", _dying_save_file(2))  # step 2 saved; dies inside step 4's adapter
    with pytest.raises(KeyboardInterrupt):
        train.train_run(model, tok, examples, train.RunSpec(1e-2, "all", 0, 0), cfg, tmp_path)
    assert [s for s, _ in train.checkpoints(tmp_path)] == [2]  # the half-written step 4 is not a checkpoint
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "train_log.csv").exists()
    assert read_safetensors(tmp_path / "checkpoints/step-0002/adapter_model.safetensors")


def test_interrupted_base_model_write_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import PreTrainedTokenizerBase

    def die(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", die)  # the model is already written
    with pytest.raises(KeyboardInterrupt):
        base_model.materialise(load_study_config({"study": "smoke"}).model, tmp_path / "base_model")
    assert list(tmp_path.iterdir()) == []


# --- bad configuration: one clear error before any job starts --------------------------------------------

BAD_CONFIGS = [
    # (Snakemake --config items, what the error must say)
    (["bogus=1"], "Could not override 'bogus'"),  # unknown top-level key
    (["train__lora__bogus=2"], "train.lora.bogus"),  # unknown nested key
    (["train__lora__r=abc"], "train.lora.r: Input should be a valid integer"),  # wrong type
    (["train__lrs=fast"], "train.lrs: Value error, expected a list of learning rates or 'auto'"),  # wrong type
    (["model__trust_remote_code=maybe"], "model.trust_remote_code: Input should be a valid boolean"),
    (["train__lrs=[]"], "train.lrs: Value error, List should have at least 1 item"),  # empty grids
    (["train__n_real=[]"], "train.n_real: List should have at least 1 item"),
    (["steering__multipliers=[]"], "steering.multipliers: List should have at least 1 item"),
    (["icl__ks=[]"], "icl.ks: List should have at least 1 item"),
    (["train__lrs=[0.0]"], "every learning rate must be > 0"),  # lr <= 0
    (["train__lrs=[-1e-3,1e-3]"], "every learning rate must be > 0"),
    (["train__negative_control__lr=0"],
     "train.negative_control.lr: Value error, the negative control's lr must be > 0"),
    (["behavior__data__eval=data/behaviors/listening/missing.jsonl"], "file not found"),  # missing data file
    (["behavior__data__eval=../../etc/passwd"], "points outside"),  # data outside data/
]


@pytest.mark.parametrize(("items", "message"), BAD_CONFIGS)
def test_bad_config_is_one_clear_error(items: list[str], message: str) -> None:
    from phaseflip.config import ConfigError

    raw = dict(item.split("=", 1) for item in ["study=smoke", *items])
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study_config(raw)


def test_empty_steering_layers_is_refused() -> None:
    from phaseflip.config import ConfigError

    with pytest.raises(ConfigError, match="steering.layers"):
        load_study_config({"study": "smoke", "steering": {"layers": []}})


@pytest.mark.integration
def test_bad_config_stops_snakemake_before_any_job(tmp_path: Path) -> None:
    """Through `snakemake -n --config ...` as a user types it: the error, no job listed, nothing written."""
    copy_project(tmp_path, ["Snakefile", "workflow", "conf", "data", "params.yaml"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # One of each kind (each dry run imports torch: ~5-30 s): unknown key, wrong type, empty grid, lr <= 0,
    # missing data file, data outside data/. The unit test above covers every entry of BAD_CONFIGS.
    for items, message in [BAD_CONFIGS[i] for i in (0, 2, 5, 9, 12, 13)]:
        proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--config", "study=smoke", *items], cwd=tmp_path,
                              capture_output=True, text=True, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, items
        assert message in out, (items, out[-2000:])
        assert "rule train:" not in out and "Job stats" not in out, items
        assert "Traceback" not in out, (items, out[-2000:])
    assert not (tmp_path / "results").exists()


def test_steering_vector_file_is_byte_identical_across_processes(tmp_path: Path) -> None:
    """The nondeterminism found by test_reproducibility: safetensors wrote several metadata entries in a
    per-process random order, so the same vector gave different bytes (and DVC hashes) run to run."""
    script = ("import sys, torch; from steering_vectors import SteeringVector; "
              "from phaseflip.interventions.steering import save_vector; "
              "save_vector(SteeringVector({0: torch.arange(4.0), 1: torch.ones(4)}, 'decoder_block'), "
              "sys.argv[1], {'pair_ids': ['a', 'b'], 'read_token_index': -1})")
    outs = [tmp_path / f"v{i}.safetensors" for i in range(4)]
    for out in outs:
        subprocess.run([sys.executable, "-c", script, str(out)], check=True)
    assert len({out.read_bytes() for out in outs}) == 1
    vector, meta = __import__("phaseflip.interventions.steering", fromlist=["load_vector"]).load_vector(outs[0])
    assert meta == {"pair_ids": ["a", "b"], "read_token_index": -1} and vector.layer_type == "decoder_block"
