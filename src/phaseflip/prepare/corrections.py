"""Corrections (docs/design.md §3): validate the behavior's data and write the clean splits.

1. Read corrections, eval scenarios and retention prompts (errors name file, line and field).
2. Stop on a leak: a correction whose content an eval scenario shares (`behavior.leak_threshold`).
3. Fill a correction's missing `rejected` with the base model's own greedy reply.
4. Make reference pairs for eval scenarios without `preferred`/`rejected` (see `references.py`).
5. Write train.jsonl, eval.jsonl, retention.jsonl and data_report.json (counts, pairs, acceptance rate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from phaseflip.config import BehaviorConfig
from phaseflip.data import Example, find_leaks, load_examples, load_retention
from phaseflip.io import DataError, write_json, write_jsonl
from phaseflip.measure.judge import Judge
from phaseflip.prepare.references import ModelReplier, make_reference_pairs, skipped_report

ModelLoader = Callable[[], tuple[Any, Any]]  # () -> (model, tokenizer), called only when a stage needs it


def check_leaks(corrections: list[Example], evals: list[Example], behavior: BehaviorConfig) -> None:
    leaks = find_leaks(corrections, evals, behavior.leak_threshold)
    if leaks:
        raise DataError(
            f"{behavior.data.eval}: eval scenarios share content with corrections (correction, eval, score): "
            f"{leaks}. Rewrite those scenarios, or, if they are not leaks, raise behavior.leak_threshold "
            f"(now {behavior.leak_threshold}; scores are content overlap 0..1)")


def fill_rejected(corrections: list[Example], load_model: ModelLoader) -> tuple[list[Example], int]:
    """Missing `rejected` -> the base model's greedy reply: what it really did."""
    from phaseflip.model.scoring import generate, prompt_of

    missing = [c for c in corrections if c.rejected is None]
    if not missing:
        return corrections, 0
    model, tok = load_model()
    replies = generate(model, tok, [prompt_of(tok, c) for c in missing], max_new_tokens=64, batch_size=8)
    # An empty reply means the model ended its turn at once; record that token rather than nothing.
    filled = {c.id: r or tok.eos_token for c, r in zip(missing, replies, strict=True)}
    return [replace(c, rejected=filled[c.id], meta={**c.meta, "rejected_source": "base_model_greedy"})
            if c.id in filled else c for c in corrections], len(missing)


def prepare(behavior: BehaviorConfig, out: Path, seed: int, load_model: ModelLoader,
            make_judge: Callable[[], Judge]) -> dict[str, Any]:
    """The whole stage; returns the data report (also written to `out/data_report.json`)."""
    corrections = load_examples(behavior.data.corrections, "corrections")
    evals = load_examples(behavior.data.eval, "eval")
    retention = load_retention(behavior.data.retention)
    check_leaks(corrections, evals, behavior)
    corrections, n_filled = fill_rejected(corrections, load_model)
    needing = any(not (e.preferred and e.rejected) for e in evals)
    if needing and behavior.references.enabled:
        model, tok = load_model()
        replier = ModelReplier(model, tok, behavior.references.batch_size, behavior.references.max_new_tokens)
        evals, references = make_reference_pairs(evals, corrections, behavior, make_judge(), replier, seed)
    else:
        references = skipped_report(evals, "behavior.references.enabled is false" if needing else "all hand-written")
    write_jsonl(out / "train.jsonl", [c.to_json() for c in corrections])
    write_jsonl(out / "eval.jsonl", [e.to_json() for e in evals])
    write_jsonl(out / "retention.jsonl", retention)
    report = {"corrections": len(corrections), "rejected_filled": n_filled, "eval": len(evals),
              "eval_per_family": dict(Counter(e.family for e in evals).most_common()),
              "retention": len(retention), "leak_threshold": behavior.leak_threshold, "references": references}
    write_json(out / "data_report.json", report)
    return report
