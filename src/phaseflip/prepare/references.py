"""Reference replies for eval scenarios that have none (part of stage corrections; docs/design.md §6 needs them).

`margin`, `p_preferred`, `forced_choice` and `heldout_loss` score a preferred and a rejected reply per
scenario. A behavior given as eval prompts alone gets them from the base model:

- preferred: the reply with the behavior in context (its description as the system prompt and
  `behavior.references.n_shots` corrections as earlier turns), kept only if the judge accepts it;
- rejected: the plain greedy reply (what the model does), kept only if it is coherent and the judge
  rejects it.

The first attempt of each side is greedy; later attempts (up to `max_attempts`) sample with other seeds.
A scenario gets a pair only when both sides are found; hand-written replies always win (a scenario with
one hand-written side gets only the other generated). Each reply's provenance goes into the record's
`meta.references`; scenarios left without a pair are named in the report and left out of the pairwise
metrics by the evaluator.

    pairs, report = make_reference_pairs(evals, corrections, behavior, judge, ModelReplier(model, tok, 8, 64), seed=0)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from phaseflip.config import BehaviorConfig
from phaseflip.data import Example
from phaseflip.measure.judge import Judge
from phaseflip.prepare.dreams import behavior_in_context

SIDES = ("preferred", "rejected")


class Replier(Protocol):
    """What reference generation needs from a model: one reply per chat (greedy when temperature is None)."""

    def __call__(self, chats: Sequence[list[dict[str, str]]], formats: Sequence[str], temperature: float | None,
                 seed: int) -> list[str]: ...


class ModelReplier:
    """A `Replier` backed by a HF causal LM: batched, seeded generation of `max_new_tokens`."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, max_new_tokens: int):
        self.model, self.tok = model, tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def __call__(self, chats: Sequence[list[dict[str, str]]], formats: Sequence[str], temperature: float | None,
                 seed: int) -> list[str]:
        from phaseflip.model.scoring import generate, render_prompt

        prompts = [render_prompt(self.tok, c, f) for c, f in zip(chats, formats, strict=True)]
        return generate(self.model, self.tok, prompts, self.max_new_tokens, self.batch_size,
                        temperature=temperature, seed=seed)


def reference_shots(corrections: list[Example], n: int, seed: int) -> list[Example]:
    """`n` corrections (a seeded choice, in file order) shown before every scenario."""
    picked = sorted(random.Random(seed).sample(range(len(corrections)), min(n, len(corrections))))
    return [corrections[i] for i in picked]


def make_reference_pairs(evals: list[Example], corrections: list[Example], behavior: BehaviorConfig, judge: Judge,
                         replier: Replier, seed: int) -> tuple[list[Example], dict[str, Any]]:
    """The eval set with generated pairs where it had none, and the report of how they were made."""
    cfg = behavior.references
    shots = reference_shots(corrections, cfg.n_shots, seed)
    needing = [e for e in evals if not (e.preferred and e.rejected)]
    found: dict[str, dict[str, str]] = {e.id: {} for e in needing}
    provenance: dict[str, dict[str, Any]] = {
        e.id: {s: {"source": "hand"} for s in SIDES if getattr(e, s)} for e in needing}
    judged = {s: 0 for s in SIDES}
    accepted = {s: 0 for s in SIDES}
    for side in SIDES:
        # Rejected replies only for scenarios that have a preferred one: a half pair is never used.
        todo = [e for e in needing if getattr(e, side) is None
                and (side == "preferred" or e.preferred or "preferred" in found[e.id])]
        for attempt in range(cfg.max_attempts):
            if not todo:
                break
            temperature = None if attempt == 0 else cfg.temperature
            call_seed = seed * 1_000 + attempt * 2 + (side == "rejected")
            chats = [behavior_in_context(e.messages, behavior.description if cfg.system_prompt else "", shots)
                     if side == "preferred" else e.messages for e in todo]
            replies = replier(chats, [e.prompt_format for e in todo], temperature, call_seed)
            for e, reply in zip(todo, replies, strict=True):
                verdict = judge(reply, e.family, prompt=e.direction)
                ok = verdict.behavior if side == "preferred" else verdict.coherent and not verdict.behavior
                judged[side] += 1
                if ok:
                    accepted[side] += 1
                    found[e.id][side] = reply
                    provenance[e.id][side] = {"source": "base_model_in_context" if side == "preferred"
                                              else "base_model_plain", "attempt": attempt,
                                              "temperature": temperature, "seed": call_seed,
                                              "judge_matched": list(verdict.matched),
                                              **({"shots": [s.id for s in shots],
                                                  "system_prompt": cfg.system_prompt} if side == "preferred" else {})}
            todo = [e for e in todo if side not in found[e.id]]
        for e in todo:
            provenance[e.id][side] = {"source": None, "attempts": cfg.max_attempts, "failed": True}
    out, without = [], []
    for e in evals:
        if e.id not in found:
            out.append(e)
            continue
        pair = {s: getattr(e, s) or found[e.id].get(s) for s in SIDES}
        if not (pair["preferred"] and pair["rejected"]):
            without.append(e.id)
            out.append(replace(e, meta={**e.meta, "references": {"pair": False, **provenance[e.id]}}))
            continue
        out.append(replace(e, preferred=pair["preferred"], rejected=pair["rejected"],
                           meta={**e.meta, "references": {"pair": True, **provenance[e.id]}}))
    total_judged = sum(judged.values())
    report = {
        "scenarios": len(evals), "hand_written_pairs": len(evals) - len(needing), "needing_pairs": len(needing),
        "generated_pairs": len(needing) - len(without), "with_pair": len(evals) - len(without),
        "without_pair": without, "shots": [s.id for s in shots], "max_attempts": cfg.max_attempts,
        "judged": judged, "accepted": accepted,
        "acceptance_rate": {s: round(accepted[s] / judged[s], 3) if judged[s] else None for s in SIDES}
        | {"overall": round(sum(accepted.values()) / total_judged, 3) if total_judged else None},
    }
    return out, report


def skipped_report(evals: list[Example], reason: str) -> dict[str, Any]:
    """The report when no pairs are generated (disabled): scenarios without a pair are still named."""
    without = [e.id for e in evals if not (e.preferred and e.rejected)]
    return {"scenarios": len(evals), "hand_written_pairs": len(evals) - len(without), "needing_pairs": len(without),
            "generated_pairs": 0, "with_pair": len(evals) - len(without), "without_pair": without,
            "skipped": reason}


def summary_line(report: dict[str, Any] | None) -> str:
    """One sentence for the study report: how many scenarios have a pair, how they were made, the judge's
    acceptance rate while making them (with Wilson 95% intervals), and which scenarios have none."""
    from phaseflip.stats.intervals import wilson_interval

    if not report:
        return "Reference pairs: not recorded (data_report.json from an older corrections stage)."
    line = (f"Reference pairs: {report['with_pair']} of {report['scenarios']} eval scenarios have one "
            f"({report['hand_written_pairs']} hand-written, {report['generated_pairs']} generated with the base "
            f"model of {report['needing_pairs']} that needed one)")
    rates = []
    for side in SIDES:
        n, k = report.get("judged", {}).get(side, 0), report.get("accepted", {}).get(side, 0)
        if n:
            lo, hi = wilson_interval(k, n)
            rates.append(f"{side} {k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]")
    if rates:
        line += "; judge acceptance while making them: " + ", ".join(rates)
    if report["without_pair"]:
        names = ", ".join(report["without_pair"][:20]) + (" …" if len(report["without_pair"]) > 20 else "")
        line += (f". Without a pair, left out of margin, p_preferred, forced_choice and heldout_loss "
                 f"({len(report['without_pair'])}): {names}")
    return line + "."
