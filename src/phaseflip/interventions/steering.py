"""Activation steering: a contrastive steering vector (library `steering-vectors`) at every layer, screened
over a multiplier grid, then the best few settings scored with exactly the evaluation code of a LoRA
checkpoint (docs/design.md §2, §6).

The vector is mean(activation | prompt + preferred) - mean(activation | prompt + rejected) at the last
token, per decoder block. Vectors are saved as safetensors with their metadata; never pickled.

The screen (`screen`) scores every (training set, layer, multiplier) on the pairwise metrics of the
in-distribution scenarios (margin, p_preferred, forced_choice) and on retention_kl, without sampling.
It is cheap because steering at layer L leaves blocks 0..L unchanged: one base forward pass records
every block's output, and each setting runs only blocks L+1.. on (output of block L + m * vector).
`select` then applies the pre-registered criterion (conf/steering `screen`): the highest
in-distribution p_preferred among settings whose retention_kl stays under the bound; those settings
get the full evaluation (`sweep`: sampling, every family, retention, coherence).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from steering_vectors import SteeringVector, train_steering_vector
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import ModelConfig, ScreenConfig, SteeringConfig, SteeringVectorConfig
from phaseflip.data import IN_DISTRIBUTION, Example
from phaseflip.dtype_choice import DTYPES, DtypeChoice, choose_dtype, resolve_dtype
from phaseflip.interventions.multiplier_search import search_layer
from phaseflip.io import DataError, atomic_path, read_safetensors_with_metadata
from phaseflip.measure.evaluator import Evaluator, Row, SteeringReference
from phaseflip.model.architecture import FAST, Architecture, announce, numbered_modules
from phaseflip.model.scoring import continued, pad_batch, prompt_of, reply_suffix, token_logprobs
from phaseflip.stats.divergences import kl_divergence
from phaseflip.stats.intervals import wilson_interval


def training_pairs(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> list[tuple[str, str]]:
    pairs = []
    for ex in examples:
        if ex.preferred and ex.rejected:
            prompt, end = prompt_of(tokenizer, ex), reply_suffix(tokenizer, ex.prompt_format)
            pairs.append((prompt + ex.preferred + end, prompt + ex.rejected + end))
    if not pairs:
        raise DataError("steering needs examples with both preferred and rejected replies")
    return pairs


def vector_sets(cfg: SteeringVectorConfig) -> list[str]:
    """The training sets that get a vector: those swept, and `real` (the steering_cosine reference)."""
    return ["real"] + [t for t in cfg.training_sets if t != "real"]


def vector_file(training_set: str) -> str:
    """`vector.safetensors` is the real-corrections vector: the reference for `steering_cosine`."""
    return "vector.safetensors" if training_set == "real" else f"vector_{training_set}.safetensors"


def sweep_layers(cfg: SteeringVectorConfig, n_layers: int) -> list[int]:
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
    blocks `Architecture` does not find run whole.
    """
    if not announce(model, "forward_up_to", "steering vectors"):
        yield
        return
    arch, head = Architecture.of(model), model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        with arch.replaced_blocks(model, arch.blocks(model)[: last_layer + 1]):  # type: ignore[arg-type]
            yield
    finally:
        model.set_output_embeddings(head)


def train_vector(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
                 cfg: SteeringVectorConfig) -> SteeringVector:
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
          multipliers: list[float], settings: Sequence[tuple[int, float]] | None = None,
          scenario_rows: list[Row] | None = None) -> list[Row]:
    """Every (layer, multiplier) (or the given `settings`), scored like a checkpoint; the model is
    restored after each. `scenario_rows`, when given, receives each setting's per-scenario counts (tagged
    layer and multiplier: the report's held-out selection reads them).

    Multiplier 0 is the base model: its rows come from the `evaluate_base` job, not from here.
    """
    rows: list[Row] = []
    if settings is None:
        settings = [(layer, mult) for layer in sorted(vector.layer_activations) for mult in multipliers if mult != 0]
    for layer, mult in tqdm(settings, desc="steering full evaluation", unit="setting"):
        handle = single_layer(vector, layer).patch_activations(model, multiplier=mult)
        evaluator.previous = None  # dissimilarity is between checkpoints, not between settings
        try:
            rows += [dict(r, layer=layer, multiplier=mult) for r in evaluator.evaluate(model, step=0)]
            if scenario_rows is not None:
                scenario_rows += [dict(r, layer=layer, multiplier=mult) for r in evaluator.scenario_rows
                                  if r["step"] == 0]
        finally:
            handle.remove()
    return rows


def vector_for_layer(path: str | Path, layer: int) -> torch.Tensor:
    vector, _ = load_vector(path)
    if layer not in vector.layer_activations:
        raise DataError(f"{path}: no vector for layer {layer} (has {sorted(vector.layer_activations)})")
    return vector.layer_activations[layer]


def reference_layer(cfg: SteeringVectorConfig, n_layers: int) -> int:
    """The layer whose real-corrections vector is the reference direction of `steering_cosine`: the middle
    of the steered layers."""
    layers = sweep_layers(cfg, n_layers)
    return layers[len(layers) // 2]


def steering_reference(vector_path: str | Path, cfg: SteeringVectorConfig, n_layers: int) -> SteeringReference:
    layer = reference_layer(cfg, n_layers)
    return SteeringReference(layer, vector_for_layer(vector_path, layer))


# --- The screen: every (training set, layer, multiplier) on the pairwise metrics, without sampling ---

SCREEN_METRICS = ("margin", "p_preferred", "forced_choice", "retention_kl")


@contextmanager
def upper_blocks(model: PreTrainedModel, layer: int) -> Iterator[None]:
    """Within the block, a forward pass takes `inputs_embeds` as the output of block `layer` and runs only
    blocks layer+1.. (then the final norm and LM head).

    The kept blocks' attention is renumbered from 0 while inside, because a KV cache indexes layers by
    that number and reads its length from layer 0. Exact where `Architecture` finds the embedding
    entering block 0 unchanged and a plain cache (Llama, Qwen2, Phi-3, GPT-NeoX); `screen` checks that
    on one setting before it trusts the shortcut.
    """
    arch = Architecture.of(model)
    blocks = arch.blocks(model)
    numbered: list[tuple[Any, int]] = [(module, index) for index in range(layer + 1, len(blocks))
                for module in numbered_modules(blocks[index], index)]
    with arch.replaced_blocks(model, torch.nn.ModuleList(list(blocks[layer + 1:]))):
        for module, index in numbered:
            module.layer_idx = index - layer - 1
        try:
            yield
        finally:
            for module, index in numbered:
                module.layer_idx = index


def _run_recording(model: PreTrainedModel, **inputs: Any) -> tuple[Any, list[torch.Tensor]]:
    """A forward pass, and the output of every decoder block (what a steering vector is added to)."""
    outputs: list[torch.Tensor] = []

    def record(_module: Any, _args: Any, out: Any) -> None:
        outputs.append((out[0] if isinstance(out, tuple) else out).detach())

    hooks = [block.register_forward_hook(record) for block in Architecture.of(model).blocks(model)]
    try:
        result = model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return result, outputs


@dataclass
class _Encoded:
    """The screen's token batches (prompts left-padded; replies and retention texts right-padded)."""
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    reply_ids: list[torch.Tensor]  # [preferred, rejected]
    reply_mask: list[torch.Tensor]
    ret_ids: torch.Tensor
    ret_mask: torch.Tensor
    ret_lengths: list[int]


@dataclass
class _Base:
    """Unsteered block outputs for every token of the screen's inputs, and the base retention tables."""
    prompt: list[torch.Tensor]  # per block: (scenarios, prompt width, d)
    replies: list[list[torch.Tensor]]  # [preferred, rejected] -> per block: (scenarios, reply width, d)
    retention: list[torch.Tensor]  # per block: (texts, width, d)
    retention_logp: torch.Tensor  # (texts, width - 1, vocab)


def _encode(tok: PreTrainedTokenizerBase, scenarios: list[Example], retention: list[str],
            device: torch.device, max_length: int = 128) -> _Encoded:
    # Exactly the tokenization of `model.scoring.score_and_sample` (pairs) and `model.scoring.text_logprobs`
    # (retention), so the screen's numbers equal the full evaluation's.
    prompts = [tok(prompt_of(tok, ex), add_special_tokens=False).input_ids for ex in scenarios]
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, width - len(p):], prompt_mask[i, width - len(p):] = torch.tensor(p), 1
    reply_ids, reply_mask = [], []
    for replies in ([ex.preferred or "" for ex in scenarios], [ex.rejected or "" for ex in scenarios]):
        ids = [tok(("" if ex.prompt_format == "chat" else " ") + r + reply_suffix(tok, ex.prompt_format),
                   add_special_tokens=False).input_ids for r, ex in zip(replies, scenarios, strict=True)]
        r_ids, r_mask, _ = pad_batch(ids, ids, tok.pad_token_id, device)
        reply_ids.append(r_ids)
        reply_mask.append(r_mask)
    texts = [tok(t, add_special_tokens=False).input_ids[:max_length] for t in retention]
    ret_ids, ret_mask, _ = pad_batch(texts, texts, tok.pad_token_id, device)
    return _Encoded(prompt_ids.to(device), prompt_mask.to(device), reply_ids, reply_mask, ret_ids, ret_mask,
                    [len(t) for t in texts])


def _pair_scores(model: PreTrainedModel, enc: _Encoded, prompt_in: dict[str, torch.Tensor],
                 reply_in: list[dict[str, torch.Tensor]], croppable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean reply-token log-prob of the preferred and of the rejected reply per scenario: the prompt is
    encoded once (`prompt_in`: input_ids or inputs_embeds), each reply list continues its KV cache
    (cropped back after each list, or a copy of it where the cache cannot be cropped)."""
    mask = enc.prompt_mask
    out = model(**prompt_in, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1)
    last_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache, width, means = out.past_key_values, mask.shape[1], []
    for r_in, r_ids, r_mask in zip(reply_in, enc.reply_ids, enc.reply_mask, strict=True):
        positions = mask.sum(dim=1, keepdim=True) + torch.arange(r_ids.shape[1], device=mask.device)[None, :]
        with continued(cache, width, croppable) as past:
            logits = model(**r_in, attention_mask=torch.cat([mask, r_mask], dim=1), position_ids=positions,
                           past_key_values=past, use_cache=True).logits
        labels = r_ids.masked_fill(r_mask == 0, -100)
        total = last_logp.gather(1, r_ids[:, :1]).squeeze(1) + token_logprobs(logits, labels).sum(dim=1)
        means.append(total / r_mask.sum(dim=1).clamp(min=1))
    return means[0], means[1]


def _retention_logp(model: PreTrainedModel, enc: _Encoded, ret_in: dict[str, torch.Tensor]) -> torch.Tensor:
    positions = torch.arange(enc.ret_ids.shape[1], device=enc.ret_ids.device)[None, :].expand_as(enc.ret_ids)
    logits = model(**ret_in, attention_mask=enc.ret_mask, position_ids=positions).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def _base_pass(model: PreTrainedModel, enc: _Encoded, record_blocks: bool = True) -> _Base:
    """The unsteered references: every block's output on every input (for `screen_setting`; skipped with
    `record_blocks=False`, the generic path) and the base retention log-probs."""
    mask = enc.prompt_mask
    prompt_h: list[torch.Tensor] = []
    replies: list[list[torch.Tensor]] = []
    if record_blocks:
        out, prompt_h = _run_recording(model, input_ids=enc.prompt_ids, attention_mask=mask,
                                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                                       logits_to_keep=1)
        for r_ids, r_mask in zip(enc.reply_ids, enc.reply_mask, strict=True):
            positions = mask.sum(dim=1, keepdim=True) + torch.arange(r_ids.shape[1], device=mask.device)[None, :]
            _, hidden = _run_recording(model, input_ids=r_ids, attention_mask=torch.cat([mask, r_mask], dim=1),
                                       position_ids=positions, past_key_values=out.past_key_values, use_cache=True,
                                       logits_to_keep=1)
            out.past_key_values.crop(mask.shape[1])
            replies.append(hidden)
        positions = torch.arange(enc.ret_ids.shape[1], device=mask.device)[None, :].expand_as(enc.ret_ids)
        ret_out, ret_h = _run_recording(model, input_ids=enc.ret_ids, attention_mask=enc.ret_mask,
                                        position_ids=positions)
        return _Base(prompt_h, replies, ret_h, torch.log_softmax(ret_out.logits[:, :-1].float(), dim=-1))
    return _Base([], [], [], _retention_logp(model, enc, {"input_ids": enc.ret_ids}))


def _mean_interval(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean and normal 95% interval over scenarios: the evaluator's own interval for these metrics."""
    n = len(values)
    mean = float(values.mean())
    sd = float(values.std(unbiased=True)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _setting_row(pref: torch.Tensor, rej: torch.Tensor, ret_logp: torch.Tensor, base: _Base,
                 enc: _Encoded) -> dict[str, float]:
    margin = (pref - rej).float()
    row: dict[str, float] = {"n": float(len(margin))}
    for name, values in (("margin", margin), ("p_preferred", torch.sigmoid(margin))):
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _mean_interval(values)
    wins = int((margin > 0).sum())
    row["forced_choice"] = wins / len(margin)
    row["forced_choice_lo"], row["forced_choice_hi"] = wilson_interval(wins, len(margin))
    # KL(base || steered) per position, mean per text, then mean over texts (as the evaluator does).
    kls = [float(kl_divergence(base.retention_logp[i, : n - 1], ret_logp[i, : n - 1]).mean())
           for i, n in enumerate(enc.ret_lengths) if n > 1]
    row["retention_kl"] = sum(kls) / len(kls) if kls else math.nan
    row["n_retention"] = float(len(kls))
    return row


@torch.no_grad()
def screen_setting(model: PreTrainedModel, enc: _Encoded, base: _Base, layer: int,
                   delta: torch.Tensor) -> dict[str, float]:
    """The screen's metrics with `delta` (multiplier x vector) added to block `layer`'s output at every
    token, computing only the blocks above `layer`."""
    delta = delta.to(base.prompt[layer].dtype)
    with upper_blocks(model, layer):
        pref, rej = _pair_scores(model, enc, {"inputs_embeds": base.prompt[layer] + delta},
                                 [{"inputs_embeds": h[layer] + delta} for h in base.replies], croppable=True)
        ret_logp = _retention_logp(model, enc, {"inputs_embeds": base.retention[layer] + delta})
    return _setting_row(pref, rej, ret_logp, base, enc)


@torch.no_grad()
def patched_setting(model: PreTrainedModel, enc: _Encoded, base: _Base, vector: SteeringVector, layer: int,
                    multiplier: float) -> dict[str, float]:
    """The same metrics the slow way: the whole model, steered by `steering-vectors`' own patch."""
    handle = single_layer(vector, layer).patch_activations(model, multiplier=multiplier)
    try:
        pref, rej = _pair_scores(model, enc, {"input_ids": enc.prompt_ids}, [{"input_ids": r} for r in enc.reply_ids],
                                 croppable=Architecture.of(model).croppable_cache)
        ret_logp = _retention_logp(model, enc, {"input_ids": enc.ret_ids})
    finally:
        handle.remove()
    return _setting_row(pref, rej, ret_logp, base, enc)


SCREEN_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}  # on the margin, in nats per token


def screen(model: PreTrainedModel, tok: PreTrainedTokenizerBase, vectors: Mapping[str, SteeringVector],
           scenarios: list[Example], retention: list[str], multipliers: Sequence[float],
           dtype: torch.dtype = torch.float32, layers: Sequence[int] | None = None,
           max_scenarios: int | None = None, search: str = "grid",
           max_retention_kl: float = math.inf) -> pd.DataFrame:
    """(training set, layer, multiplier) settings: in-distribution margin, p_preferred, forced_choice (each
    with its 95% interval) and retention_kl; one row per setting scored.

    `search="grid"` scores every multiplier of every layer; `"bracket"` scores a few multipliers per layer
    and sign (`multiplier_search.search_layer`, against `max_retention_kl`): every layer is searched, and
    the rows are the settings it scored.

    Scored on the in-distribution scenarios with both reference replies (the first `max_scenarios`).
    `dtype` is the screen's compute precision (bfloat16 is 2.4x faster on a CPU with AVX512-BF16); the
    model is copied for it, and the
    base references are computed in the same precision, so multiplier 0 has retention_kl 0 exactly.
    Before the sweep, one setting is checked against `steering-vectors`' own patch on the whole model.
    Where the shortcut does not apply (`Architecture`: no block list, a cache that cannot be cropped, an
    embedding transformed before block 0) or that check fails, every setting is scored the generic way,
    steering the whole model; the table's `screen_path` says which, and the stage log says why.
    """
    chosen = [ex for ex in scenarios if ex.family == IN_DISTRIBUTION and ex.preferred and ex.rejected][:max_scenarios]
    if not chosen:
        raise DataError(f"steering screen: no {IN_DISTRIBUTION} eval scenario has both a preferred and a rejected "
                        "reply")
    if not retention:
        raise DataError("steering screen: no retention prompts (retention_kl is the screen's bound)")
    work: Any = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)  # type: ignore[arg-type]
    device = next(work.parameters()).device
    enc = _encode(tok, chosen, retention, device)
    all_layers = sorted(layers) if layers is not None else sorted(next(iter(vectors.values())).layer_activations)
    settings = [(t, layer, m) for t in vectors for layer in all_layers for m in multipliers if m != 0]
    # Announced on `model` (already announced by the stage when it named every fallback), decided on `work`.
    path = Architecture.of(work).reasons["upper_blocks"]
    if announce(model, "upper_blocks", "steering screen") and path != FAST:
        print(f"steering screen: generic path {path} (in {dtype})", flush=True)
    base = _base_pass(work, enc, record_blocks=path == FAST)
    if settings and path == FAST:  # the shortcut must equal steering the whole model, on this model
        t, layer, m = settings[len(settings) // 2]
        v = vectors[t].layer_activations[layer].to(device)
        fast = screen_setting(work, enc, base, layer, m * v)
        slow = patched_setting(work, enc, base, SteeringVector({layer: v.to(dtype)}, vectors[t].layer_type), layer, m)
        if abs(fast["margin"] - slow["margin"]) > SCREEN_CHECK_TOLERANCE.get(dtype, 1e-3):
            path = (f"on {Architecture.of(work).model_type} (blocks above layer {layer} alone give margin "
                    f"{fast['margin']:.4f}, the whole model {slow['margin']:.4f})")
            print(f"steering screen: generic path {path}", flush=True)
    def score(t: str, layer: int, m: float) -> dict[str, float]:
        v = vectors[t].layer_activations[layer].to(device)
        return (screen_setting(work, enc, base, layer, m * v) if path == FAST else patched_setting(
            work, enc, base, SteeringVector({layer: v.to(dtype)}, vectors[t].layer_type), layer, m))

    rows = []
    started = time.perf_counter()
    if search == "grid":
        for t, layer, m in tqdm(settings, desc="steering screen", unit="setting"):
            rows.append({"training_set": t, "layer": layer, "multiplier": m, **score(t, layer, m)})
    else:  # bracket: per layer and sign, a few multipliers (multiplier_search.search_layer)
        # multiplier 0 is the same model at every layer: scored once, the reference each side must beat
        unsteered = score(next(iter(vectors)), all_layers[0], 0.0)
        progress = tqdm([(t, layer) for t in vectors for layer in all_layers], desc="steering screen",
                        unit="layer")
        for t, layer in progress:
            found = search_layer(multipliers, partial(score, t, layer), max_retention_kl, unsteered)
            rows += [{"training_set": t, "layer": layer, "multiplier": m, **found[m]} for m in sorted(found)]
            progress.set_postfix(settings=len(rows))
        print(f"steering screen: bracketing search scored {len(rows)} of {len(settings)} settings "
              f"({len(rows) / max(len(settings), 1):.0%}); every layer searched", flush=True)
    elapsed = time.perf_counter() - started
    table = pd.DataFrame(rows)
    table["screen_path"] = path  # `fast` (blocks above the layer only) or why the whole model was steered
    table.attrs["settings_per_s"] = len(rows) / elapsed if elapsed > 0 else math.nan
    return table


def select(table: pd.DataFrame, cfg: ScreenConfig) -> pd.DataFrame:
    """The pre-registered criterion: per training set, the `cfg.full_evaluations` settings with the highest
    in-distribution p_preferred (ties: higher margin) among those with retention_kl <= `cfg.max_retention_kl`.

    Adds `eligible` (under the bound), `rank` (1 = best; NaN when not eligible) and `selected` columns.
    """
    out = table.copy()
    out["max_retention_kl"] = cfg.max_retention_kl  # recorded with the screen: the report states the bound
    out["eligible"] = out.retention_kl <= cfg.max_retention_kl
    out["rank"] = math.nan
    for _, grp in out[out.eligible].groupby("training_set"):
        ranked = grp.sort_values(["p_preferred", "margin", "layer", "multiplier"],
                                 ascending=[False, False, True, True])
        out.loc[ranked.index, "rank"] = range(1, len(ranked) + 1)
    out["selected"] = out["rank"] <= cfg.full_evaluations
    return out


def screen_rows(table: pd.DataFrame) -> list[Row]:
    """The screen as tidy rows for `steering_metrics.csv`: metrics named `screen_<metric>` (so they
    never mix with the full evaluation's), in_distribution for the pairwise ones, `all` for
    retention_kl, and `screen_rank` (1 = the criterion's best; NaN over the retention bound)."""
    rows: list[Row] = []
    for r in table.to_dict("records"):
        key = {"step": 0, "training_set": r["training_set"], "layer": r["layer"], "multiplier": r["multiplier"],
               "max_retention_kl": r["max_retention_kl"]}
        for metric in ("margin", "p_preferred", "forced_choice"):
            rows.append({**key, "family": IN_DISTRIBUTION, "metric": f"screen_{metric}", "value": r[metric],
                         "lo": r[f"{metric}_lo"], "hi": r[f"{metric}_hi"], "n": r["n"]})
        rows.append({**key, "family": "all", "metric": "screen_retention_kl", "value": r["retention_kl"],
                     "lo": math.nan, "hi": math.nan, "n": r["n_retention"]})
        rows.append({**key, "family": IN_DISTRIBUTION, "metric": "screen_rank", "value": r["rank"], "lo": math.nan,
                     "hi": math.nan, "n": r["n"]})
    return rows


def screen_and_evaluate(model: PreTrainedModel, tok: PreTrainedTokenizerBase, vectors: Mapping[str, SteeringVector],
                        evaluator: Evaluator, cfg: SteeringConfig,
                        scenario_rows: list[Row] | None = None) -> tuple[pd.DataFrame, list[Row], dict[str, float]]:
    """The stage: the screen over every (training set, layer, multiplier), the pre-registered selection, then
    the full evaluation of the selected settings. Returns the screen table (empty when no in-distribution
    scenario has a reference pair to screen on), the metric rows, and the seconds of each part;
    `scenario_rows` (when given) receives the fully evaluated settings' per-scenario counts."""
    # the stage resolves `auto` (and an allowed emulated bfloat16) before; a caller may leave it to here
    screen_dtype = DTYPES.get(cfg.screen.dtype) or resolve_dtype(cfg.screen.dtype, model.device)
    scenarios, started = evaluator.scenarios, time.time()
    if not any(ex.family == IN_DISTRIBUTION and ex.preferred and ex.rejected for ex in scenarios):
        return pd.DataFrame({"training_set": []}), [], {"screen": 0.0, "full": 0.0}
    table = select(screen(model, tok, vectors, scenarios, evaluator.retention, cfg.multipliers,
                          screen_dtype, max_scenarios=cfg.screen.max_scenarios, search=cfg.screen.search,
                          max_retention_kl=cfg.screen.max_retention_kl), cfg.screen)
    screened = time.time() - started
    evaluator.set_references(model)  # base retention distributions, for retention_kl of each setting
    rows = screen_rows(table)
    for training_set, chosen in table[table.selected].groupby("training_set", sort=False):
        settings = list(zip(chosen.layer.astype(int), chosen.multiplier.astype(float), strict=True))
        per_scenario: list[Row] = []
        rows += [dict(r, training_set=training_set)
                 for r in sweep(model, vectors[training_set], evaluator, cfg.multipliers, settings, per_scenario)]
        if scenario_rows is not None:
            scenario_rows += [dict(r, training_set=training_set) for r in per_scenario]
    return table, rows, {"screen": screened, "full": time.time() - started - screened}


def with_screen_dtype(cfg: SteeringConfig, model_cfg: ModelConfig,
                      device: torch.device | str) -> tuple[SteeringConfig, DtypeChoice]:
    """`cfg` with `steering.screen.dtype` resolved for `device` (auto, or refused where emulated), and the choice."""
    choice = choose_dtype(cfg.screen.dtype, device, model_cfg.allow_emulated_bfloat16, "steering.screen.dtype")
    return cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"dtype": choice.name})}), choice


def steering_table(base_rows: list[Row], rows: list[Row]) -> list[Row]:
    """The stage's metric rows: the base model as the setting (training set none, layer -1, multiplier 0),
    then the screen's and the full evaluation's rows."""
    return [dict(r, training_set="none", layer=-1, multiplier=0.0) for r in base_rows] + rows
