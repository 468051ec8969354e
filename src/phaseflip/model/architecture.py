"""Which fast paths a causal LM allows, found from what the model exposes (one adapter for every stage).

phaseflip's shortcuts are exact on Llama-shaped models and need internals that other architectures lay
out differently or lack:

- `upper_blocks` (steering screen): run only the decoder blocks above the steered layer, on the block
  output as `inputs_embeds`. Needs the block list, attention modules numbered by `layer_idx`, a cache
  that can be cropped, and an embedding that enters block 0 unchanged (Gemma-2 scales it by
  sqrt(hidden) inside the decoder, GPT-2 adds position embeddings: there the shortcut is not exact).
- `cache_crop` (pair scoring, steering screen): score each reply list on the prompt's KV cache, then
  crop it back. A sliding-window layer (Gemma-2/3, Mistral with `sliding_window`) drops states and
  cannot be cropped; the generic path continues from a copy of the cache.
- `decode_cache` (sampling): preallocate each layer's keys and values for the whole reply. Only for plain
  `DynamicLayer`s; other layers keep `transformers`' own update.
- `shared_prefix_kv` (ICL prompts): a long shared prefix encoded once, its KV placed in front of each
  row as a plain `DynamicCache`. Only where the model's own cache is one.
- `forward_up_to` (steering vectors): run blocks 0..L only and skip the LM head. Needs the block list.
- `attention` (`attention.sdpa_gqa`, chosen at load time from the config, see `attention_fast_path`).

`Architecture.of(model)` probes the model once (a two-token forward pass, remembered per model object)
and says for each fast path whether it applies; `announce` prints one line per stage for each one that
falls back, and `fast_paths` is what the base model manifest and the report record.

    arch = Architecture.of(model)
    if arch.croppable_cache: ...
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

# Where each family keeps its decoder blocks, below the model (or its base model under PEFT).
BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks",
               "model.language_model.layers", "language_model.model.layers")
FAST_PATHS = ("upper_blocks", "cache_crop", "decode_cache", "shared_prefix_kv", "forward_up_to", "attention")
FAST = "fast"

_probed: weakref.WeakKeyDictionary[torch.nn.Module, Architecture] = weakref.WeakKeyDictionary()
_announced: set[tuple[int, str]] = set()


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (blocks are looked up there)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _find_blocks(model: Any) -> tuple[Any, str, torch.nn.ModuleList] | None:
    """(parent module, attribute name, block list) of the decoder blocks, or None."""
    root = _unwrap(model)
    for path in BLOCK_PATHS:
        parent: Any = root
        *parents, name = path.split(".")
        for part in parents:
            parent = getattr(parent, part, None)
        blocks = getattr(parent, name, None) if parent is not None else None
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == root.config.num_hidden_layers:
            return parent, name, blocks
    return None


def numbered_modules(block: torch.nn.Module, index: int) -> list[torch.nn.Module]:
    """The modules of decoder block `index` that know their layer number (the KV cache indexes by it)."""
    return [m for m in block.modules() if getattr(m, "layer_idx", None) == index]


def attention_fast_path(config: PretrainedConfig) -> str:
    """`fast`, or why `attention.sdpa_gqa` would not compute what the model's own attention does: it
    applies no logit soft-capping (Gemma-2) and scales by 1/sqrt(head_dim), as `transformers`' sdpa does."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        return "soft-capped attention logits"
    if getattr(text, "scale_attn_by_inverse_layer_idx", False) or getattr(text, "reorder_and_upcast_attn", False):
        return "layer-scaled attention"
    if getattr(text, "scale_attn_weights", True) is False:
        return "unscaled attention"
    if getattr(text, "is_encoder_decoder", False):
        return "encoder-decoder model"
    return FAST


@dataclass
class Architecture:
    """What one model object allows; `reasons[path]` is `fast` or why the generic path is used."""
    model_type: str
    class_name: str
    n_blocks: int
    croppable_cache: bool
    plain_cache: bool
    embeddings_enter_unchanged: bool
    reasons: dict[str, str] = field(default_factory=dict)
    _blocks_at: tuple[Any, str] | None = None

    @classmethod
    def of(cls, model: Any) -> Architecture:
        """Probe `model` (once per model object): its block list, its cache, its embedding entry."""
        if model in _probed:
            return _probed[model]
        arch = cls._probe(model)
        _probed[model] = arch
        return arch

    @classmethod
    def _probe(cls, model: Any) -> Architecture:
        root = _unwrap(model)
        config = root.config
        found = _find_blocks(model)
        cache, entered, failed = None, None, ""
        if found is not None:
            try:
                cache, entered = _probe_forward(model, found[2][0])
            except (RuntimeError, TypeError, ValueError, AttributeError) as err:
                failed = f"the probe pass failed: {type(err).__name__}"
        plain = isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)
        arch = cls(model_type=str(config.model_type), class_name=type(root).__name__,
                   n_blocks=int(config.num_hidden_layers), croppable_cache=plain, plain_cache=plain,
                   embeddings_enter_unchanged=bool(entered), _blocks_at=found[:2] if found else None)
        on = f"on {config.model_type}"
        no_blocks = f"{on} (no decoder block list found)"
        cache_why = f"{on} ({failed or _cache_kind(cache)})"
        attention = getattr(config, "_attn_implementation", None)
        why_attention = attention_fast_path(config)
        why_attention = "not loaded with sdpa_gqa" if why_attention == FAST else why_attention
        numbered = found is not None and all(numbered_modules(b, i) for i, b in enumerate(found[2]))
        arch.reasons = {
            "upper_blocks": no_blocks if found is None else
            cache_why if not plain else
            f"{on} (the embedding is transformed before block 0)" if not entered else
            f"{on} (attention modules carry no layer_idx)" if not numbered else FAST,
            "cache_crop": FAST if plain else cache_why,
            "decode_cache": FAST if plain else cache_why,
            "shared_prefix_kv": FAST if plain else cache_why,
            "forward_up_to": no_blocks if found is None or root.get_output_embeddings() is None else FAST,
            "attention": FAST if attention == "sdpa_gqa" else f"{on} ({attention} attention: {why_attention})",
        }
        return arch

    def fast(self, path: str) -> bool:
        return self.reasons.get(path) == FAST

    def blocks(self, model: Any) -> torch.nn.ModuleList:
        if self._blocks_at is None:
            raise ValueError(f"{self.class_name}: no decoder block list found (looked at {', '.join(BLOCK_PATHS)})")
        parent, name = self._blocks_at
        return getattr(parent, name)  # type: ignore[no-any-return]

    @contextmanager
    def replaced_blocks(self, model: Any, blocks: torch.nn.ModuleList) -> Iterator[None]:
        """Within the block, the decoder runs `blocks` instead of its own."""
        assert self._blocks_at is not None
        parent, name = self._blocks_at
        original = getattr(parent, name)
        setattr(parent, name, blocks)
        try:
            yield
        finally:
            setattr(parent, name, original)

    def fast_paths(self) -> dict[str, str]:
        """path -> `fast` or the generic path's reason: what the manifest and the report record."""
        return {path: self.reasons[path] for path in FAST_PATHS}

    def summary(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "class": self.class_name, "fast_paths": self.fast_paths()}


LABELS = {"upper_blocks": "steering screen", "cache_crop": "pair scoring", "decode_cache": "decoding",
          "shared_prefix_kv": "shared-prefix KV", "forward_up_to": "steering vectors", "attention": "attention"}


def announce(model: Any, path: str, stage: str | None = None) -> bool:
    """Whether fast path `path` applies to `model`; when it does not, print one line saying so (once per
    model object and path), e.g. `steering screen: generic path on gpt_neox (no croppable cache)`."""
    arch = Architecture.of(model)
    if arch.fast(path):
        return True
    key = (id(_unwrap(model)), path)
    if key not in _announced:
        _announced.add(key)
        print(f"{stage or LABELS[path]}: generic path {arch.reasons[path]}", flush=True)
    return False


def announce_all(model: Any, stage: str) -> dict[str, str]:
    """One line for the stage's log naming every fast path that falls back on `model`, grouped by reason,
    e.g. `steering: generic path on gemma2 for upper_blocks, cache_crop (sliding-window cache layers)`;
    the per-path lines of `announce` are then not repeated for this model. Returns the fast paths."""
    arch = Architecture.of(model)
    by_reason: dict[str, list[str]] = {}
    for path, why in arch.fast_paths().items():
        _announced.add((id(_unwrap(model)), path))
        if why != FAST:
            by_reason.setdefault(why, []).append(path)
    if by_reason:
        print(f"{stage}: generic path " + "; ".join(f"{', '.join(paths)} {why}" for why, paths in by_reason.items()),
              flush=True)
    return arch.fast_paths()


# LoRA targets are configured with Llama's attention projection names; these architectures name (and
# sometimes fuse) the same projections differently. GPT-2's `c_proj` is also its MLP's output, hence `attn.`.
ATTENTION_PROJECTIONS = {
    "gpt_neox": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
                 "o_proj": "dense"},
    "gpt2": {"q_proj": "c_attn", "k_proj": "c_attn", "v_proj": "c_attn", "o_proj": "attn.c_proj"},
    "phi3": {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj"},
    "phi": {"o_proj": "dense"},
}


def lora_targets(model: Any, configured: list[str]) -> list[str]:
    """The module names LoRA adapts on `model` for the configured (Llama-named) targets: each configured
    name the model has stays; a missing one becomes the architecture's own projection
    (`ATTENTION_PROJECTIONS`: GPT-NeoX's fused `query_key_value`, GPT-2's `c_attn`, Phi-3's `qkv_proj`).
    Raises ValueError naming the model's linear layers when a target has no counterpart."""
    root = _unwrap(model)
    names = {name for name, _ in root.named_modules()}
    model_type = str(root.config.model_type)

    def present(target: str) -> bool:
        return any(n == target or n.endswith("." + target) for n in names)

    mapping = ATTENTION_PROJECTIONS.get(model_type, {})
    targets: list[str] = []
    for target in configured:
        chosen = target if present(target) else mapping.get(target)
        if chosen is None or not present(chosen):
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in root.named_modules()
                             if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
            raise ValueError(f"train.lora.target_modules: {target!r} has no counterpart in {type(root).__name__} "
                             f"({model_type}); its linear layers are {', '.join(linear)}")
        if chosen not in targets:
            targets.append(chosen)
    if targets != list(configured):
        print(f"LoRA targets on {model_type}: {', '.join(configured)} -> {', '.join(targets)}", flush=True)
    return targets


def _cache_kind(cache: Any) -> str:
    if cache is None:
        return "no cache returned"
    layers = getattr(cache, "layers", None)
    if layers is None:
        return f"{type(cache).__name__}, not a layered cache"
    kinds = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    return f"{', '.join(kinds)} cache layers, not croppable" if kinds else f"{type(cache).__name__}"


@torch.no_grad()
def _probe_forward(model: Any, first_block: torch.nn.Module) -> tuple[Any, bool]:
    """One two-token pass: the cache the model builds, and whether block 0 receives the input embedding
    module's output unchanged (nothing scaled or added in between, as `inputs_embeds` would need)."""
    root = _unwrap(model)
    embed = root.get_input_embeddings()
    ids = torch.tensor([[0, 1]], device=next(root.parameters()).device)
    seen: list[torch.Tensor] = []

    def record(_module: Any, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            seen.append(hidden.detach())

    training = root.training
    root.eval()
    hook = first_block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        embeds = embed(ids)
        out = root(input_ids=ids, use_cache=True)
    finally:
        hook.remove()
        root.train(training)
    entered = bool(seen) and seen[0].shape == embeds.shape and torch.equal(seen[0], embeds)
    return getattr(out, "past_key_values", None), entered


def forget(model: Any) -> None:
    """Drop what was probed for `model` (after it changed its cache class or block list)."""
    _probed.pop(model, None)
