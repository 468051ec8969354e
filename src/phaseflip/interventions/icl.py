"""In-context learning: k real corrections as prior turns in context (k in icl.ks), scored like a checkpoint.

Which k corrections are used is seeded and recorded: one seeded order of the corrections, and k shots
are its first k (so the shots of a smaller k are among those of a larger one; "all" is every
correction). The examples go after any system prompt of the scenario and before its own turns, so
all scenarios of one format share the shot context: `model.scoring.score_and_sample` encodes that shared
prefix once per batch instead of once per prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import ConfigError
from phaseflip.data import Example
from phaseflip.measure.evaluator import Evaluator, Row, best_step, replace_rows
from phaseflip.model.scoring import render_prompt


def resolve_ks(ks: list[int | str], n_corrections: int) -> list[int]:
    """The configured ks as shot counts, sorted, each once."""
    return sorted({resolve_k(k, n_corrections) for k in ks})


def resolve_k(k: int | str, n_corrections: int) -> int:
    """The number of shots for a configured k ("all" = every correction)."""
    if k == "all":
        return n_corrections
    if not isinstance(k, int) or k > n_corrections:
        raise ConfigError(f"icl.ks: k={k!r} exceeds the {n_corrections} corrections available")
    return k


def icl_shots(corrections: list[Example], k: int, seed: int) -> list[Example]:
    """The first k of one seeded order of the corrections (nested across k)."""
    if k > len(corrections):
        raise ConfigError(f"icl.ks: k={k} exceeds the {len(corrections)} corrections available")
    order = random.Random(seed * 7919).sample(corrections, len(corrections))
    return order[:k]


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


def evaluate_icl(evaluator: Evaluator, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 corrections: list[Example], ks: list[int], seed: int) -> tuple[list[Row], dict[int, list[str]]]:
    """Rows of every k > 0 (tagged `k`) and the shots each used.

    Every k is sampled in-distribution (adaptive, like a checkpoint); the best k by in-distribution
    behavior_rate then gets the other families added (`Evaluator.sample_ood`: its in-distribution rows
    stay the ones it was chosen on, not recomputed), which Q4's per-family comparison reads. Sampling
    all families for every k would multiply the stage's cost by the number of ks for one row of the
    report. Retention prompts carry no shots, so retention_kl is 0 by construction and not computed.
    Inside the evaluator each k is its own step (k), so the best k's state is still there; the rows say
    step 0 (the base model's weights) and carry `k`.
    """
    rows: list[Row] = []
    shots_used: dict[int, list[str]] = {}
    prompt_fns: dict[int, Callable[[Example], str]] = {}
    for k in [k for k in ks if k > 0]:
        shots = icl_shots(corrections, k, seed)
        shots_used[k] = [s.id for s in shots]
        prompt_fns[k] = partial(icl_prompt, tokenizer, shots)
        evaluator.previous = None
        rows += [dict(r, k=k, step=0) for r in evaluator.evaluate(model, step=k, prompt_fn=prompt_fns[k],
                                                                  retention=False, sample="in_distribution")]
    best = best_step([dict(r, step=r["k"]) for r in rows])  # the k with the highest in-distribution rate
    if best is not None:
        extra = [dict(r, k=best, step=0) for r in evaluator.sample_ood(model, best, prompt_fn=prompt_fns[best])]
        rows = replace_rows(rows, extra, "k", best)
    return rows, shots_used


def icl_table(evaluator: Evaluator, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              corrections: list[Example], ks: list[int], seed: int,
              base_rows: list[Row]) -> tuple[list[Row], dict[int, list[str]]]:
    """The stage's rows and shots for every k. k=0 is the base model: its rows are `base_rows` (the
    evaluate_base job's) tagged k=0, not recomputed; retention prompts carry no shots, so retention_kl is
    0 by construction."""
    rows: list[Row] = [dict(r, k=0) for r in base_rows] if 0 in ks else []
    icl_rows, shots_used = evaluate_icl(evaluator, model, tokenizer, corrections, ks, seed)
    return rows + icl_rows, {0: [], **shots_used}
