"""Grouped-query attention without copying keys and values, for CPU.

`transformers`' `sdpa` attention expands the key/value heads of a grouped-query model (SmolLM2: 3 kv
heads for 9 query heads) into full copies whenever an attention mask is given, which is every padded
batch and every decoding step with a cache. On CPU that copy costs more than the attention itself:
13.6 ms vs 1.1 ms per layer for one decoding step of 63 rows x 104 cached tokens (SmolLM2 shapes).
PyTorch's `scaled_dot_product_attention(..., enable_gqa=True)` reads the shared heads in place and
gives identical results, so phaseflip registers it under its own name and `base_model.load` picks it
on CPU. On CUDA `transformers`' own `sdpa` stays: there a mask with `enable_gqa` falls back to the math
kernel, which is slower than copying. A decoding step (one query per row, no gradient) skips the
kernel altogether: in bfloat16 its fixed cost per call was 11x the attention itself (see
`_one_query_attention`).

    from phaseflip.model.attention import attention_implementation
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention_implementation(device, config))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """`transformers`' sdpa attention, with the kv heads shared instead of repeated."""
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if query.shape[2] == 1 and not torch.is_grad_enabled():
        return _one_query_attention(query, key, value, attention_mask, scaling), None
    if is_causal is None:  # no mask and several query positions: the kernel's own causal path
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=bool(is_causal),
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _one_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                         scaling: float | None) -> torch.Tensor:
    """Attention of one new token per row (a decoding step) as two small matmuls, in (batch, 1, heads, dim).

    The CPU flash kernel has a high fixed cost per call: 3.37 ms vs 0.30 ms for 40 rows x 90 cached
    tokens in bfloat16 (SmolLM2 shapes), 30 calls per decoding step. The query heads of one kv head are
    laid side by side as rows, so the shared keys and values are read in place (no copy per head).
    """
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    scores = torch.matmul(query.reshape(batch, kv_heads, heads // kv_heads, dim), key.transpose(-1, -2))
    scores = scores.float().mul_(scaling if scaling is not None else dim ** -0.5)
    if mask is not None:
        mask = mask.reshape(mask.shape[0], 1, 1, length)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        else:
            scores.add_(mask)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs, value).reshape(batch, 1, heads, value.shape[-1])


AttentionInterface.register(NAME, sdpa_gqa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as `sdpa`


def attention_implementation(device: torch.device | str, config: PretrainedConfig | None = None) -> str:
    """The attention to load a model with on `device`: `sdpa_gqa` on CPU where it computes what the
    model's own attention does (`architecture.attention_fast_path`), else `transformers`' own: `eager`
    for soft-capped attention logits (Gemma-2; `sdpa` would drop the cap), `sdpa` otherwise."""
    from phaseflip.model.architecture import FAST, attention_fast_path

    why = attention_fast_path(config) if config is not None else FAST
    if why != FAST:
        text = config.get_text_config(decoder=True) if config is not None else None
        return "eager" if getattr(text, "attn_logit_softcapping", None) else "sdpa"
    return NAME if torch.device(device).type == "cpu" else "sdpa"
