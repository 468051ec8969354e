import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from phaseflip.config import TrainConfig, load_study_config
from phaseflip.data import Example
from phaseflip.interventions.train import (
    RunSpec,
    add_lora,
    checkpoints,
    greedy_replies,
    grid,
    load_adapter_weights,
    merged_checkpoint,
    parse_run_id,
    train_run,
    training_examples,
)
from phaseflip.io import DataError

EXAMPLES = [
    Example(id=f"c{i}", messages=[{"role": "user", "content": f"Task {i}: use tabs."}],
            preferred=f"Understood — tabs only for task {i}.", tags=["coding"])
    for i in range(4)
]


def train_cfg(**changes: object) -> TrainConfig:
    base = load_study_config({"study": "smoke"}).train.model_dump()
    base.update({"max_steps": 4, "checkpoint_steps": [2, 4], **changes})
    return TrainConfig.model_validate(base)


def test_grid_ids_name_their_parameters() -> None:
    cfg = train_cfg(lrs=[1e-3, 3e-3], n_real=[1, "all"], dream_k=[0], seeds=[0])
    ids = [r.run_id for r in grid(cfg)]
    assert "lr1e-03_n1_k0_s0" in ids and "lr3e-03_nall_k0_s0" in ids
    assert ids[-1] == "control-own-replies_lr1e-03_nall_k0_s0"  # the control's lr `main`: the grid's first
    assert len(set(ids)) == len(ids) == 5
    extra = train_cfg(lrs=[1e-3], n_real=["all"], dream_k=[0], seeds=[0],
                      extra_runs=[{"lr": 3e-3, "n_real": 4, "dream_k": 2}, {"lr": 1e-3, "n_real": "all"}])
    assert [r.run_id for r in grid(extra)] == ["lr1e-03_nall_k0_s0", "lr3e-03_n4_k2_s0",
                                              "control-own-replies_lr1e-03_nall_k0_s0"]  # no duplicate point


def test_run_ids_parse_back_to_their_grid_points() -> None:
    cfg = train_cfg(lrs=[1e-4, 3e-3], n_real=[1, "all"], dream_k=[0, 2], seeds=[0, 1],
                    extra_runs=[{"lr": 2e-3, "n_real": 4, "dream_k": 1, "seed": 7}])
    for spec in grid(cfg):
        assert parse_run_id(spec.run_id) == spec == parse_run_id(spec.run_id, cfg)
    with pytest.raises(DataError, match="not of the form"):
        parse_run_id("lr1e-3_nsome_k0_s0")
    with pytest.raises(DataError, match="not in the configured grid"):
        parse_run_id("lr9e-01_nall_k0_s0", cfg)
    # a run's job depends on the recipe, which a new grid point leaves unchanged
    assert train_cfg(lrs=[1e-3]).recipe() == train_cfg(lrs=[1e-3, 3e-2], seeds=[0, 5]).recipe()


def test_training_set_selection_and_negative_control() -> None:
    dreams = [Example(id=f"c0-d{j}", messages=EXAMPLES[0].messages, preferred="Noted — x.", meta={"parent": "c0"})
              for j in range(3)]
    assert len(training_examples(RunSpec(1e-3, 2, 0, 0), EXAMPLES, dreams)) == 2
    with_dreams = training_examples(RunSpec(1e-3, "all", 2, 0), EXAMPLES, dreams)
    assert [e.id for e in with_dreams][-2:] == ["c0-d0", "c0-d1"]
    control = training_examples(RunSpec(1e-3, "all", 0, 0, control="shuffled"), EXAMPLES, [])
    assert [e.messages for e in control] == [e.messages for e in EXAMPLES]
    assert all(c.preferred != e.preferred for c, e in zip(control, EXAMPLES, strict=True))  # a derangement
    unrelated = ["The Nile flows north.", "Photosynthesis stores energy in sugar."]
    irrelevant = training_examples(RunSpec(1e-3, "all", 0, 0, control="irrelevant"), EXAMPLES, [], unrelated)
    assert [e.messages for e in irrelevant] == [e.messages for e in EXAMPLES]
    assert {e.preferred for e in irrelevant} <= set(unrelated)
    with pytest.raises(DataError, match="unrelated"):
        training_examples(RunSpec(1e-3, "all", 0, 0, control="irrelevant"), EXAMPLES, [])
    own = training_examples(RunSpec(1e-3, "all", 0, 0, control="own-replies"), EXAMPLES, [],
                            own_replies=lambda exs: [f"own {e.id}" for e in exs])
    assert [e.messages for e in own] == [e.messages for e in EXAMPLES]
    assert [e.preferred for e in own] == [f"own {e.id}" for e in EXAMPLES]
    with pytest.raises(DataError, match="base model"):
        training_examples(RunSpec(1e-3, "all", 0, 0, control="own-replies"), EXAMPLES, [])
    assert parse_run_id("control-own-replies_lr3e-03_nall_k0_s0").control == "own-replies"


def test_greedy_replies_are_the_models_own_deterministic_and_length_matched(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    first = greedy_replies(model, tok, EXAMPLES, max_length=64)
    assert first == greedy_replies(model, tok, EXAMPLES, max_length=64)  # greedy: no draw to vary
    assert len(first) == len(EXAMPLES) and all(isinstance(r, str) for r in first)
    budget = max(len(tok(e.preferred, add_special_tokens=False).input_ids) for e in EXAMPLES)
    assert all(len(tok(r, add_special_tokens=False).input_ids) <= budget + 1 for r in first)


def test_training_lowers_loss_and_saves_safetensors_checkpoints(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    summary = train_run(model, tok, EXAMPLES, RunSpec(1e-2, "all", 0, 0), train_cfg(), tmp_path)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert summary["status"] == "completed"
    assert list(log.step) == [1, 2, 3, 4]
    assert log.loss.iloc[-1] < log.loss.iloc[0]
    assert [s for s, _ in checkpoints(tmp_path)] == [2, 4]
    assert (tmp_path / "checkpoints/step-0004/adapter_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    # dvclive's layout, so `dvc plots show` / `dvc exp show` read the per-step logs
    live = pd.read_csv(tmp_path / "dvclive/plots/metrics/train/loss.tsv", sep="\t")
    assert list(live.step) == [1, 2, 3, 4] and live.loss.tolist() == pytest.approx(log.loss.tolist())


def test_bfloat16_training_follows_float32_with_float32_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A bfloat16 base model (the shipped CPU setting) trains float32 LoRA adapters (peft keeps them in
    float32): the losses track a float32 run's."""
    from safetensors.torch import load_file

    from phaseflip.model import base_model

    losses = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = base_model.load(tiny_model_dir, dtype=dtype, allow_emulated_bfloat16=True)
        train_run(model, tok, EXAMPLES, RunSpec(1e-2, "all", 0, 0), train_cfg(), tmp_path / dtype)
        losses[dtype] = pd.read_csv(tmp_path / dtype / "train_log.csv").loss.tolist()
    adapters = load_file(str(tmp_path / "bfloat16/checkpoints/step-0004/adapter_model.safetensors"))
    assert {t.dtype for t in adapters.values()} == {torch.float32}
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.03)


def test_checkpoint_round_trip(tiny, tiny_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.model import base_model

    model, tok = tiny
    cfg = train_cfg()
    train_run(model, tok, EXAMPLES, RunSpec(1e-2, "all", 0, 0), cfg, tmp_path)
    ids = tok("Understood — tabs.", return_tensors="pt").input_ids
    with torch.no_grad():
        trained = model(ids).logits
    fresh, _ = base_model.load(tiny_model_dir)
    wrapped = add_lora(fresh, cfg.lora)
    load_adapter_weights(wrapped, checkpoints(tmp_path)[-1][1])
    with torch.no_grad():
        assert torch.allclose(wrapped(ids).logits, trained, atol=1e-5)
        wrapped.merge_adapter()  # how evaluate runs a checkpoint: merged, then unmerged before the next
        assert torch.allclose(wrapped(ids).logits, trained, atol=1e-4)
        wrapped.unmerge_adapter()
        assert torch.allclose(wrapped(ids).logits, trained, atol=1e-5)


def test_merged_checkpoint_in_bfloat16_restores_the_base_weights_exactly(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    """bfloat16 compute (the shipped model on CPU): merging a checkpoint and leaving it must give back the
    base weights bit for bit, checkpoint after checkpoint; peft's unmerge (W + BA - BA) does not."""
    from phaseflip.model import base_model

    cfg = train_cfg()
    model, tok = base_model.load(tiny_model_dir)
    train_run(model, tok, EXAMPLES, RunSpec(1e-2, "all", 0, 0), cfg, tmp_path)
    bf16, _ = base_model.load(tiny_model_dir, dtype="bfloat16", allow_emulated_bfloat16=True)
    wrapped = add_lora(bf16, cfg.lora)
    before = {k: v.clone() for k, v in wrapped.state_dict().items() if "lora_" not in k}
    ids = tok("Understood — tabs.", return_tensors="pt").input_ids
    with torch.no_grad():
        for _, folder in checkpoints(tmp_path):
            load_adapter_weights(wrapped, folder)
            unmerged = wrapped(ids).logits.float()  # base in bfloat16 + the LoRA branch in float32
            with merged_checkpoint(wrapped, folder):
                merged = wrapped(ids).logits.float()
            assert torch.allclose(merged, unmerged, atol=0.05 * unmerged.abs().max().item())
    after = {k: v for k, v in wrapped.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in wrapped.modules())


def test_resume_after_interruption_matches_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    from phaseflip.model import base_model

    cfg = train_cfg()
    spec = RunSpec(1e-2, "all", 0, 0)
    model, tok = base_model.load(tiny_model_dir)
    train_run(model, tok, EXAMPLES, spec, cfg, tmp_path / "full")
    # "Interrupted" run: trained to step 2 only, then restarted with the full schedule.
    model, tok = base_model.load(tiny_model_dir)
    train_run(model, tok, EXAMPLES, spec, train_cfg(max_steps=2, checkpoint_steps=[2]), tmp_path / "resumed")
    model, tok = base_model.load(tiny_model_dir)
    summary = train_run(model, tok, EXAMPLES, spec, cfg, tmp_path / "resumed")
    assert summary["resumed_from"] == 2
    full = pd.read_csv(tmp_path / "full/train_log.csv")
    resumed = pd.read_csv(tmp_path / "resumed/train_log.csv")
    pd.testing.assert_frame_equal(full, resumed, atol=1e-5)


def test_nan_loss_is_recorded_as_diverged_not_raised(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    summary = train_run(model, tok, EXAMPLES, RunSpec(math.inf, "all", 0, 0), train_cfg(max_steps=4), tmp_path)
    assert summary["status"] == "diverged"
    assert summary["last_good_step"] == 0  # diverged at step 2, before its checkpoint
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.step) == [1, 2] and math.isnan(log.loss.iloc[-1])


def test_exploding_loss_is_recorded_with_last_good_checkpoint(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    cfg = train_cfg(max_steps=6, checkpoint_steps=[1, 2, 3, 4, 5, 6], divergence_loss=10.9)
    summary = train_run(model, tok, EXAMPLES, RunSpec(50.0, "all", 0, 0), cfg, tmp_path)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert summary["status"] == "diverged"
    assert log.loss.iloc[-1] > 10.9 and (log.loss.iloc[:-1] <= 10.9).all()
    assert summary["last_good_step"] == int(log.step.iloc[-1]) - 1
    assert [s for s, _ in checkpoints(tmp_path)] == list(range(1, summary["last_good_step"] + 1))


def test_corrupt_adapter_is_a_clear_error(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, _ = tiny
    folder = tmp_path / "step-0002"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="adapter_model.safetensors: cannot read adapter"):
        load_adapter_weights(add_lora(model, train_cfg().lora), folder)


def test_checkpoints_of_another_configuration_are_not_resumed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from phaseflip.model import base_model

    spec = RunSpec(1e-2, "all", 0, 0)
    model, tok = base_model.load(tiny_model_dir)
    train_run(model, tok, EXAMPLES, spec, train_cfg(), tmp_path, base_fingerprint="model-A")
    model, tok = base_model.load(tiny_model_dir)
    summary = train_run(model, tok, EXAMPLES, spec, train_cfg(), tmp_path, base_fingerprint="model-B")
    assert summary["resumed_from"] == 0
    assert [s for s, _ in checkpoints(tmp_path)] == [2, 4]
