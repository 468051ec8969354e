"""Stage icl: k real corrections as prior turns in context (k in icl.ks), scored like a checkpoint.

Which k corrections are used is seeded and recorded. The examples go after any system prompt of
the scenario and before its own turns.

    python -m phaseflip.cli icl --params '{...}' --base results/base_model ... --out results/icl
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from phaseflip.data import Example
from phaseflip.scoring import render_prompt


def choose_shots(corrections: list[Example], k: int, seed: int) -> list[Example]:
    if k > len(corrections):
        raise ValueError(f"icl k={k} exceeds the {len(corrections)} corrections available")
    return random.Random(seed * 7919 + k).sample(corrections, k)


def icl_messages(shots: list[Example], scenario: Example) -> list[dict[str, str]]:
    system = [m for m in scenario.messages[:1] if m["role"] == "system"]
    rest = scenario.messages[len(system):]
    context: list[dict[str, str]] = []
    for shot in shots:
        context += [m for m in shot.messages if m["role"] != "system"]
        context.append({"role": "assistant", "content": shot.preferred or ""})
    return system + context + rest


def icl_prompt(tokenizer: PreTrainedTokenizerBase, shots: list[Example], scenario: Example) -> str:
    return render_prompt(tokenizer, icl_messages(shots, scenario), scenario.prompt_format)
