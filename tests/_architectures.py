"""Tiny random-weight causal LMs of several architectures (hidden 64, 2 layers) with the real SmolLM2
tokenizer and chat template: built from `transformers`' own config classes, nothing downloaded.

    python tests/_architectures.py /tmp/arch            # one folder per architecture, for the smoke study
    python tests/_architectures.py /tmp/arch gpt2 gemma2
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
# Short enough that the smoke study's prompts (the chat template's system prompt alone is ~30 tokens)
# overflow it: sliding-window caches then really drop states, as a 4096-token window does on long inputs.
SLIDING_WINDOW = 16


def _decoder(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
                max_position_embeddings=2048, tie_word_embeddings=True, **extra)


BUILDERS: dict[str, tuple[Callable[..., Any], type[PreTrainedModel], dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, _decoder(num_key_value_heads=KV_HEADS)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, _decoder(num_key_value_heads=KV_HEADS)),
    "mistral": (MistralConfig, MistralForCausalLM, _decoder(num_key_value_heads=KV_HEADS,
                                                            sliding_window=SLIDING_WINDOW)),
    "phi3": (Phi3Config, Phi3ForCausalLM, _decoder(num_key_value_heads=KV_HEADS, pad_token_id=None)),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, _decoder(num_key_value_heads=KV_HEADS, head_dim=16,
                                                         sliding_window=SLIDING_WINDOW)),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, _decoder(num_key_value_heads=KV_HEADS, head_dim=16,
                                                             sliding_window=SLIDING_WINDOW,
                                                             layer_types=["sliding_attention", "full_attention"])),
    "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM, _decoder()),
    "gpt2": (GPT2Config, GPT2LMHeadModel, dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                                               n_positions=2048, tie_word_embeddings=True)),
}
ARCHITECTURES = list(BUILDERS)


def build(name: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A random-weight model of architecture `name` sized for `tokenizer`'s vocabulary."""
    config_class, model_class, kwargs = BUILDERS[name]
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = config_class(vocab_size=len(tokenizer), **ids, **kwargs)
    torch.manual_seed(seed)
    return model_class(config).eval()


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    from phaseflip.config import load_study_config
    from phaseflip.model.base_model import _tokenizer_from_gguf

    return _tokenizer_from_gguf(load_study_config({"study": "smoke"}).model)


def save(name: str, folder: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """A Hugging Face folder (safetensors, tokenizer and chat template), as a user would bring one."""
    build(name, tokenizer).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    out, names = Path(sys.argv[1]), sys.argv[2:] or ARCHITECTURES
    tok = smollm2_tokenizer()
    for arch in names:
        print(save(arch, out / arch, tok))
