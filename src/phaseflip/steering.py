"""Stage steering: a contrastive steering vector (library `steering-vectors`), swept over layers x
multipliers and scored with exactly the evaluation code of a LoRA checkpoint (§2, §6).

The vector is mean(activation | prompt + preferred) - mean(activation | prompt + rejected) at the last
token, per decoder block. Vectors are saved as safetensors with their metadata; never pickled.

    python -m phaseflip.cli steering --params '{...}' --base results/base_model \\
        --corrections results/corrections/train.jsonl --eval ... --retention ... --out results/steering
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from steering_vectors import SteeringVector, train_steering_vector
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import SteeringConfig
from phaseflip.data import Example
from phaseflip.evaluate import Evaluator, Row
from phaseflip.io import DataError, atomic_path, read_safetensors_with_metadata
from phaseflip.scoring import prompt_of, reply_suffix


def training_pairs(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> list[tuple[str, str]]:
    pairs = []
    for ex in examples:
        if ex.preferred and ex.rejected:
            prompt, end = prompt_of(tokenizer, ex), reply_suffix(tokenizer, ex.prompt_format)
            pairs.append((prompt + ex.preferred + end, prompt + ex.rejected + end))
    if not pairs:
        raise DataError("steering needs examples with both preferred and rejected replies")
    return pairs


def vector_sets(cfg: SteeringConfig) -> list[str]:
    """The training sets that get a vector: those swept, and `real` (the steering_cosine reference)."""
    return ["real"] + [t for t in cfg.training_sets if t != "real"]


def vector_file(training_set: str) -> str:
    """`vector.safetensors` is the real-corrections vector: the reference for `steering_cosine`."""
    return "vector.safetensors" if training_set == "real" else f"vector_{training_set}.safetensors"


def sweep_layers(cfg: SteeringConfig, n_layers: int) -> list[int]:
    layers = list(range(n_layers)) if cfg.layers == "all" else list(cfg.layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise DataError(f"steering.layers {bad} outside the model's 0..{n_layers - 1}")
    return layers


@contextmanager
def forward_up_to(model: PreTrainedModel, last_layer: int) -> Iterator[None]:
    """Within the block, a forward pass runs decoder blocks 0..`last_layer` only and skips the LM head.

    A steering vector reads activations up to its deepest layer; the blocks above it and the vocabulary
    projection are wasted work (SmolLM2 with layers [9, 15]: 14 of 30 blocks and a 49k-token head,
    about 60% of each forward pass). Activations at the kept layers are unchanged. Models whose decoder
    does not keep its blocks in a `layers` list run whole.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    head = model.get_output_embeddings()
    if not isinstance(blocks, torch.nn.ModuleList) or head is None:
        yield
        return
    decoder.layers = blocks[: last_layer + 1]  # type: ignore[union-attr]
    model.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        decoder.layers = blocks  # type: ignore[union-attr]
        model.set_output_embeddings(head)


def train_vector(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
                 cfg: SteeringConfig) -> SteeringVector:
    layers = sweep_layers(cfg, model.config.num_hidden_layers)
    with forward_up_to(model, max(layers)):
        return train_steering_vector(model, tokenizer, training_pairs(tokenizer, examples), layers=layers,
                                     layer_type=cfg.layer_type, read_token_index=cfg.read_token_index,
                                     show_progress=True, batch_size=8)


def save_vector(vector: SteeringVector, path: str | Path, meta: dict[str, Any]) -> None:
    tensors = {f"layer_{layer}": v.detach().float().cpu().contiguous() for layer, v in vector.layer_activations.items()}
    # One metadata entry, keys sorted: safetensors writes its metadata map in a per-process random order,
    # so several entries would make the file's bytes (and its DVC hash) differ from run to run.
    metadata = {"phaseflip": json.dumps({"layer_type": vector.layer_type, **meta}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_vector(path: str | Path) -> tuple[SteeringVector, dict[str, Any]]:
    tensors, raw = read_safetensors_with_metadata(path, "steering vector")
    acts = {int(k.split("_", 1)[1]): v for k, v in tensors.items()}
    meta = (json.loads(raw["phaseflip"]) if "phaseflip" in raw  # older files: one entry per key
            else {k: v if k == "layer_type" else json.loads(v) for k, v in raw.items()})
    layer_type = meta.pop("layer_type", "decoder_block")
    return SteeringVector(acts, layer_type), meta  # type: ignore[arg-type]


def single_layer(vector: SteeringVector, layer: int) -> SteeringVector:
    return SteeringVector({layer: vector.layer_activations[layer]}, vector.layer_type)


def sweep(model: PreTrainedModel, vector: SteeringVector, evaluator: Evaluator,
          multipliers: list[float]) -> list[Row]:
    """Every (layer, multiplier), scored like a checkpoint; the model is restored after each.

    Multiplier 0 is the base model: its rows come from the `evaluate_base` job, not from here.
    """
    rows: list[Row] = []
    settings = [(layer, mult) for layer in sorted(vector.layer_activations) for mult in multipliers if mult != 0]
    for layer, mult in tqdm(settings, desc="steering sweep", unit="setting"):
        handle = single_layer(vector, layer).patch_activations(model, multiplier=mult)
        evaluator.previous = None  # dissimilarity is between checkpoints, not between settings
        try:
            rows += [dict(r, layer=layer, multiplier=mult) for r in evaluator.evaluate(model, step=0)]
        finally:
            handle.remove()
    return rows


def vector_for_layer(path: str | Path, layer: int) -> torch.Tensor:
    vector, _ = load_vector(path)
    if layer not in vector.layer_activations:
        raise DataError(f"{path}: no vector for layer {layer} (has {sorted(vector.layer_activations)})")
    return vector.layer_activations[layer]
