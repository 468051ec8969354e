"""Stage dreams (§4): amplify each real correction into K template variations, with provenance.

The `template` generator recombines a correction's structure (its acknowledgment, its domain) with
new scenarios and phrasings from the behavior's vocabulary file. Every candidate passes three
filters, counted in the dream report: the judge must accept the preferred reply (and reject the
rejected one), the text must be coherent, and it must not be a near-duplicate of a kept dream or of
any eval scenario (no leak into the test set).

    python -m phaseflip.cli dreams --params '{...}' --corrections results/corrections/train.jsonl \\
        --eval results/corrections/eval.jsonl --out results/dreams
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from phaseflip.config import DreamsConfig
from phaseflip.data import Example, similarity
from phaseflip.io import DataError
from phaseflip.judge import RubricJudge

VOCAB_KEYS = ("scenarios", "prompt_templates", "preferred_templates", "rejected_templates", "acks")
ATTEMPTS_PER_DREAM = 8


def load_vocab(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        vocab = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read dream vocabulary ({err})") from err
    missing = [k for k in VOCAB_KEYS if not (isinstance(vocab, dict) and vocab.get(k))]
    if missing:
        raise DataError(f"{path}: dream vocabulary needs non-empty {missing}")
    for i, item in enumerate(vocab["scenarios"]):
        need = {"domain", "task", "direction", "restatement", "work", "alternative"}
        if not isinstance(item, dict) or need - set(item):
            raise DataError(f"{path}: scenarios[{i}] needs fields {sorted(need)}")
    return vocab


def _ack_of(parent: Example, acks: list[str]) -> str | None:
    """The parent's own acknowledgment opener, so dreams keep its voice."""
    text = (parent.preferred or "").strip()
    return next((a for a in acks if re.match(re.escape(a) + r"\b", text, re.IGNORECASE)), None)


def _candidate(parent: Example, vocab: dict[str, Any], rng: random.Random) -> tuple[Example, dict[str, Any]]:
    domain = parent.tags[0] if parent.tags else None
    same_domain = [s for s in vocab["scenarios"] if s["domain"] == domain]
    # Mostly the parent's domain, sometimes another: new domains widen what the model sees.
    pool = same_domain if same_domain and rng.random() < 0.7 else vocab["scenarios"]
    scenario = rng.choice(pool)
    direction = scenario["direction"]
    fill = {"task": scenario["task"], "direction": direction, "direction_cap": direction[:1].upper() + direction[1:],
            "ack": _ack_of(parent, vocab["acks"]) or rng.choice(vocab["acks"]),
            "restatement": scenario["restatement"], "work": scenario["work"], "alternative": scenario["alternative"]}
    prompt_t, pref_t, rej_t = (rng.randrange(len(vocab[k])) for k in VOCAB_KEYS[1:4])
    # A dream keeps the parent's lead-in turns (system prompt, earlier turns) and replaces the request.
    messages = [dict(m) for m in parent.messages[:-1]] + [
        {"role": "user", "content": vocab["prompt_templates"][prompt_t].format(**fill)}]
    dream = Example(
        id="", messages=messages, preferred=vocab["preferred_templates"][pref_t].format(**fill),
        rejected=vocab["rejected_templates"][rej_t].format(**fill), tags=[scenario["domain"]],
    )
    recipe = {"scenario": vocab["scenarios"].index(scenario), "prompt_template": prompt_t,
              "preferred_template": pref_t, "rejected_template": rej_t}
    return dream, recipe


def generate_dreams(corrections: list[Example], evals: list[Example], vocab: dict[str, Any], judge: RubricJudge,
                    cfg: DreamsConfig, seed: int) -> tuple[list[Example], dict[str, Any]]:
    """K dreams per correction that pass every filter, and the report of what was dropped and why."""
    kept: list[Example] = []
    counts: Counter[str] = Counter()
    per_parent: dict[str, int] = {}
    for p_index, parent in enumerate(corrections):
        rng = random.Random(seed * 1_000_003 + p_index)
        n_kept = 0
        for attempt in range(cfg.k_per_correction * ATTEMPTS_PER_DREAM):
            if n_kept == cfg.k_per_correction:
                break
            dream, recipe = _candidate(parent, vocab, rng)
            counts["generated"] += 1
            pref, rej = judge(dream.preferred or ""), judge(dream.rejected or "")
            filters = {"judge": pref.behavior and not rej.behavior, "coherence": pref.coherent and rej.coherent}
            filters["not_near_duplicate_of_dream"] = all(
                similarity(dream.direction, k.direction) < cfg.near_duplicate_threshold for k in kept)
            filters["not_near_duplicate_of_eval"] = all(
                similarity(dream.direction, e.direction) < cfg.near_duplicate_threshold for e in evals)
            failed = next((name for name, ok in filters.items() if not ok), None)
            if failed:
                counts[f"dropped_{failed}"] += 1
                continue
            n_kept += 1
            kept.append(Example(
                id=f"{parent.id}-d{n_kept:02d}", messages=dream.messages, preferred=dream.preferred,
                rejected=dream.rejected, tags=dream.tags,
                meta={"parent": parent.id, "generator": "template", "seed": seed, "attempt": attempt,
                      "recipe": recipe, "filters": filters},
            ))
        per_parent[parent.id] = n_kept
    counts["kept"] = len(kept)
    scenarios_used = {d.meta["recipe"]["scenario"] for d in kept}
    report = {
        "generators": list(cfg.generators), "k_per_correction": cfg.k_per_correction, "seed": seed,
        "counts": dict(counts), "kept_per_parent": per_parent,
        "acceptance_rate": round(len(kept) / counts["generated"], 3) if counts["generated"] else None,
        "diversity": {"distinct_scenarios": len(scenarios_used),
                      "mean_pairwise_similarity": _mean_pairwise_similarity(kept)},
    }
    return kept, report


def _mean_pairwise_similarity(dreams: list[Example], limit: int = 200) -> float | None:
    sample = dreams[:limit]
    pairs = [(a, b) for i, a in enumerate(sample) for b in sample[i + 1 :]]
    if not pairs:
        return None
    return round(sum(similarity(a.direction, b.direction) for a, b in pairs) / len(pairs), 3)
