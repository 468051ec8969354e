"""Dreams (docs/design.md §4): amplify each real correction into K variations, with provenance.

Generators (`dreams.generators`, mixable; K per correction is split across them in list order):

- `template` fills the behavior's own prompt / preferred / rejected templates with new scenarios from
  its vocabulary file (`behavior.data.dream_vocab`, read only when this generator is selected with
  K > 0). The fields are the vocabulary's: whatever `{placeholder}` the templates use, every scenario
  must give. Two are optional helpers: `domain` (dreams stay mostly in the parent correction's
  domain, its first tag) and `acks` (a list of openers: `{ack}` is the parent's own when its preferred
  reply starts with one, else a random one).
- `model` lets the current model write them, for any behavior: it continues a list of requests (other
  corrections' requests, then the parent's) with a new one, replies to it once with the behavior in
  context (the behavior's description as the system prompt, a few corrections as earlier turns: the
  preferred reply) and once as it is (the rejected reply). Nothing in it is specific to one behavior.

Every candidate passes the same filters, counted in the dream report: the judge must accept the
preferred reply and reject the rejected one, all text must be coherent, and the request must not be a
near-duplicate of a kept dream, of a real correction, or of any eval scenario (no leak into the test set).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from phaseflip.config import Coherence, DreamModel, DreamsConfig, JudgeConfig, split_k
from phaseflip.data import Example, leak_score, similarity
from phaseflip.io import DataError
from phaseflip.measure.judge import Judge, is_coherent

TEMPLATE_KEYS = ("prompt_templates", "preferred_templates", "rejected_templates")
VOCAB_KEYS = ("scenarios", *TEMPLATE_KEYS)
ATTEMPTS_PER_DREAM = 8
FILTERS = ("judge", "coherence", "not_near_duplicate_of_dream", "not_near_duplicate_of_correction",
           "not_near_duplicate_of_eval")


def load_vocab(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        vocab = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read dream vocabulary ({err})") from err
    missing = [k for k in VOCAB_KEYS if not (isinstance(vocab, dict) and vocab.get(k))]
    if missing:
        raise DataError(f"{path}: dream vocabulary needs non-empty {missing}")
    used = {name for key in TEMPLATE_KEYS for template in vocab[key]
            for _, name, _, _ in string.Formatter().parse(str(template)) if name}
    if "ack" in used and not vocab.get("acks"):
        raise DataError(f"{path}: the templates use {{ack}}: dream vocabulary needs non-empty ['acks']")
    # {direction_cap} is made from `direction`; {ack} from `acks`: every other field comes from the scenario
    need = used - {"ack", "direction_cap"} | ({"direction"} if "direction_cap" in used else set())
    for i, item in enumerate(vocab["scenarios"]):
        if not isinstance(item, dict) or need - set(item):
            raise DataError(f"{path}: scenarios[{i}] needs fields {sorted(need)} (the templates' placeholders)")
    return vocab


def vocab_for(cfg: DreamsConfig, vocab_path: str | None) -> dict[str, Any] | None:
    """The template generator's vocabulary, read only when that generator is selected with K > 0."""
    if not split_k(cfg.k_per_correction, list(cfg.generators)).get("template"):
        return None
    if vocab_path is None:
        raise DataError("dreams: the template generator needs behavior.data.dream_vocab (or choose dreams=model "
                        "or dreams.k_per_correction=0)")
    return load_vocab(vocab_path)


def uses_model_writer(cfg: DreamsConfig) -> bool:
    """Whether the model generator writes any dream (so the stage needs the base model)."""
    return bool(split_k(cfg.k_per_correction, list(cfg.generators)).get("model"))


def _ack_of(parent: Example, acks: list[str]) -> str | None:
    """The parent's own acknowledgment opener, so dreams keep its voice."""
    text = (parent.preferred or "").strip()
    return next((a for a in acks if re.match(re.escape(a) + r"\b", text, re.IGNORECASE)), None)


def _fill(scenario: dict[str, Any], ack: str | None) -> dict[str, str]:
    """The template fields: the scenario's own, plus `direction_cap` and `ack` where they can be made."""
    fill = {key: str(value) for key, value in scenario.items()}
    if "direction" in fill:
        fill["direction_cap"] = fill["direction"][:1].upper() + fill["direction"][1:]
    if ack is not None:
        fill["ack"] = ack
    return fill


def _candidate(parent: Example, vocab: dict[str, Any], rng: random.Random) -> tuple[Example, dict[str, Any]]:
    """A template dream: a vocabulary scenario in one of the prompt/reply templates."""
    domain = parent.tags[0] if parent.tags else None
    same_domain = [s for s in vocab["scenarios"] if domain is not None and s.get("domain") == domain]
    # Mostly the parent's domain, sometimes another: new domains widen what the model sees.
    pool = same_domain if same_domain and rng.random() < 0.7 else vocab["scenarios"]
    scenario = rng.choice(pool)
    acks = vocab.get("acks")
    fill = _fill(scenario, (_ack_of(parent, acks) or rng.choice(acks)) if acks else None)
    prompt_t, pref_t, rej_t = (rng.randrange(len(vocab[k])) for k in VOCAB_KEYS[1:4])
    # A dream keeps the parent's lead-in turns (system prompt, earlier turns) and replaces the request.
    messages = [dict(m) for m in parent.messages[:-1]] + [
        {"role": "user", "content": vocab["prompt_templates"][prompt_t].format(**fill)}]
    dream = Example(
        id="", messages=messages, preferred=vocab["preferred_templates"][pref_t].format(**fill),
        rejected=vocab["rejected_templates"][rej_t].format(**fill),
        tags=[str(scenario["domain"])] if "domain" in scenario else [],
    )
    recipe = {"scenario": vocab["scenarios"].index(scenario), "prompt_template": prompt_t,
              "preferred_template": pref_t, "rejected_template": rej_t}
    return dream, recipe


class DreamWriter(Protocol):
    """What the `model` generator needs from a model: text continuations and chat replies, a batch at a time
    (one reply at a time took 18 min for `formal`'s 86 candidates on a CPU; a batch per round, minutes)."""

    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]: ...

    def reply(self, chats: list[list[dict[str, str]]], max_new_tokens: int, temperature: float,
              seed: int) -> list[str]: ...


class ModelWriter:
    """A `DreamWriter` backed by a HF causal LM and its tokenizer (sampled with a fixed seed per batch)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size

    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        from phaseflip.model.scoring import generate

        return generate(self.model, self.tok, prompts, max_new_tokens, self.batch_size, temperature=temperature,
                        seed=seed)

    def reply(self, chats: list[list[dict[str, str]]], max_new_tokens: int, temperature: float,
              seed: int) -> list[str]:
        from phaseflip.model.scoring import render_prompt

        return self.complete([render_prompt(self.tok, m) for m in chats], max_new_tokens, temperature, seed)


def _request_from(text: str) -> str:
    """The first line the model wrote, without list markers or quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return line.strip().lstrip("-*•0123456789.) ").strip().strip('"').strip()


def behavior_in_context(messages: list[dict[str, str]], description: str, shots: list[Example],
                        system_template: str = "{description}") -> list[dict[str, str]]:
    """The chat that shows the behavior: its description as the system prompt (merged with a lead-in
    system turn), then each shot correction as a user turn and its preferred reply, then `messages`."""
    system = system_template.format(description=" ".join(description.split()))
    own_system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    rest = messages[1:] if own_system is not None else messages
    turns: list[dict[str, str]] = []
    if system.strip():
        turns.append({"role": "system", "content": system + (" " + own_system if own_system else "")})
    elif own_system:
        turns.append({"role": "system", "content": own_system})
    for shot in shots:
        turns += [{"role": "user", "content": shot.direction}, {"role": "assistant", "content": shot.preferred or ""}]
    return turns + [dict(m) for m in rest]


def _model_candidates(parents: list[Example], rngs: list[random.Random], corrections: list[Example],
                      description: str, writer: DreamWriter, cfg: DreamModel,
                      call_seed: int) -> list[tuple[Example, dict[str, Any]]]:
    """One model dream per parent, written in three batched calls: a new request continuing a list of the
    corrections' requests, its reply with the behavior in context (preferred) and as is (rejected)."""
    plans = []
    for parent, rng in zip(parents, rngs, strict=True):
        others = [c for c in corrections if c.id != parent.id] or [parent]
        shown = rng.sample(others, min(cfg.n_examples, len(others)))
        shots = [parent] + rng.sample(others, min(max(cfg.n_shots - 1, 0), len(others))) if cfg.n_shots else []
        examples = [c.direction for c in shown] + [parent.direction]
        plans.append((parent, shown, shots,
                      cfg.request_header + "".join(f"- {' '.join(e.split())}\n" for e in examples) + "-"))
    texts = writer.complete([plan[3] for plan in plans], cfg.max_request_tokens, cfg.temperature, call_seed)
    chats = [[dict(m) for m in parent.messages[:-1]] + [{"role": "user", "content": _request_from(t) or "(empty)"}]
             for (parent, *_), t in zip(plans, texts, strict=True)]
    told = [behavior_in_context(m, description, shots, cfg.system_prompt)
            for m, (_, _, shots, _) in zip(chats, plans, strict=True)]
    preferred = writer.reply(told, cfg.max_reply_tokens, cfg.temperature, call_seed + 1)
    rejected = writer.reply(chats, cfg.max_reply_tokens, cfg.temperature, call_seed + 2)
    return [(Example(id="", messages=m, preferred=p, rejected=r, tags=list(parent.tags[:1])),
             {"examples": [c.id for c in shown], "shots": [c.id for c in shots], "call_seed": call_seed})
            for m, p, r, (parent, shown, shots, _) in zip(chats, preferred, rejected, plans, strict=True)]


def generate_dreams(corrections: list[Example], evals: list[Example], vocab: dict[str, Any] | None, judge: Judge,
                    cfg: DreamsConfig, seed: int, writer: DreamWriter | None = None,
                    description: str = "") -> tuple[list[Example], dict[str, Any]]:
    """K dreams per correction that pass every filter, and the report of what was dropped and why.

    `vocab` is needed by the `template` generator only, `writer` (the current model; see `ModelWriter`)
    and the behavior's `description` by the `model` generator only.
    """
    quotas = split_k(cfg.k_per_correction, list(cfg.generators))
    if quotas.get("model") and writer is None:
        raise DataError("dreams: the model generator needs the base model (pass --base)")
    if quotas.get("template") and vocab is None:
        raise DataError("dreams: the template generator needs a vocabulary (behavior.data.dream_vocab)")
    kept: list[Example] = []  # every dream kept so far: a candidate must not near-duplicate one
    found: dict[tuple[int, str], list[Example]] = {}  # (parent index, generator) -> its kept dreams
    counts: Counter[str] = Counter()
    per_generator: dict[str, Counter[str]] = {g: Counter() for g in cfg.generators}
    failed_by: dict[str, Counter[str]] = {g: Counter() for g in cfg.generators}  # every failed filter

    def consider(p_index: int, generator: str, attempt: int, dream: Example, recipe: dict[str, Any]) -> None:
        """Filter one candidate; keep it (with its provenance) if it passes every filter."""
        counts["generated"] += 1
        per_generator[generator]["generated"] += 1
        filters = _filters(dream, judge, kept, corrections, evals, cfg)
        failed_by[generator].update(name for name in FILTERS if not filters[name])
        failed = next((name for name in FILTERS if not filters[name]), None)
        if failed:
            counts[f"dropped_{failed}"] += 1
            per_generator[generator][f"dropped_{failed}"] += 1
            return
        parent, mine = corrections[p_index], found.setdefault((p_index, generator), [])
        per_generator[generator]["kept"] += 1
        tag = "d" if generator == "template" else "m"
        mine.append(Example(
            id=f"{parent.id}-{tag}{len(mine) + 1:02d}", messages=dream.messages, preferred=dream.preferred,
            rejected=dream.rejected, tags=dream.tags,
            meta={"parent": parent.id, "generator": generator, "seed": seed, "attempt": attempt,
                  "recipe": recipe, "filters": filters},
        ))
        kept.append(mine[-1])

    def n_kept(p_index: int, generator: str) -> int:
        return len(found.get((p_index, generator), []))

    def rng_of(p_index: int, generator: str) -> random.Random:
        # The template generator's stream is the one it always had, so template-only dreams are stable.
        return random.Random(seed * 1_000_003 + p_index + 7_919 * [str(g) for g in cfg.generators].index(generator))

    if quotas.get("template"):
        assert vocab is not None
        for p_index, parent in enumerate(corrections):
            rng = rng_of(p_index, "template")
            for attempt in range(quotas["template"] * ATTEMPTS_PER_DREAM):
                if n_kept(p_index, "template") == quotas["template"]:
                    break
                consider(p_index, "template", attempt, *_candidate(parent, vocab, rng))
    if quotas.get("model"):
        assert writer is not None
        # In rounds: attempt r for every correction still short of its quota, as one batch.
        rngs = [rng_of(p_index, "model") for p_index in range(len(corrections))]
        for attempt in tqdm(range(quotas["model"] * cfg.model.attempts_per_dream), desc="dreams (model)",
                            unit="round"):
            short = [p for p in range(len(corrections)) if n_kept(p, "model") < quotas["model"]]
            if not short:
                break
            written = _model_candidates([corrections[p] for p in short], [rngs[p] for p in short], corrections,
                                        description, writer, cfg.model, seed * 1_000_003 + attempt * 10_007)
            for p_index, candidate in zip(short, written, strict=True):
                consider(p_index, "model", attempt, *candidate)
    # Parent by parent, generators in their configured order (the order training reads them in).
    kept = [d for p in range(len(corrections)) for g in cfg.generators for d in found.get((p, g), [])]
    per_parent = {c.id: sum(n_kept(p, g) for g in cfg.generators) for p, c in enumerate(corrections)}
    counts["kept"] = len(kept)
    report = _report(kept, counts, per_generator, per_parent, quotas, cfg, seed)
    report["failed_by_filter"] = dict(sum(failed_by.values(), Counter()))
    report["failed_by_filter_per_generator"] = {g: dict(c) for g, c in failed_by.items()}
    return kept, report


def _filters(dream: Example, judge: Judge, kept: list[Example], corrections: list[Example], evals: list[Example],
             cfg: DreamsConfig) -> dict[str, bool]:
    """Every filter's outcome for one candidate (all are computed, so each dream records all of them)."""
    prompt = dream.direction
    pref = judge(dream.preferred or "", dream.family, prompt=prompt)
    rej = judge(dream.rejected or "", dream.family, prompt=prompt)
    judge_cfg = getattr(judge, "cfg", None)
    request_ok = is_coherent(prompt, judge_cfg.coherence if isinstance(judge_cfg, JudgeConfig) else Coherence())
    t = cfg.near_duplicate_threshold
    return {
        "judge": pref.behavior and not rej.behavior,
        "coherence": pref.coherent and rej.coherent and request_ok,
        "not_near_duplicate_of_dream": all(similarity(prompt, k.direction) < t for k in kept),
        "not_near_duplicate_of_correction": all(leak_score(prompt, c.direction) < t for c in corrections),
        "not_near_duplicate_of_eval": all(leak_score(prompt, e.direction) < t for e in evals),
    }


def _report(kept: list[Example], counts: Counter[str], per_generator: dict[str, Counter[str]],
            per_parent: dict[str, int], quotas: dict[str, int], cfg: DreamsConfig, seed: int) -> dict[str, Any]:
    scenarios_used = {d.meta["recipe"]["scenario"] for d in kept if d.meta["generator"] == "template"}
    similarity_mean = _mean_pairwise_similarity(kept)
    distance = None if similarity_mean is None else round(1 - similarity_mean, 3)
    return {
        "generators": list(cfg.generators), "k_per_correction": cfg.k_per_correction, "k_per_generator": quotas,
        "seed": seed, "filters": list(FILTERS), "counts": dict(counts),
        "per_generator": {g: dict(c) for g, c in per_generator.items()}, "kept_per_parent": per_parent,
        "acceptance_rate": round(len(kept) / counts["generated"], 3) if counts["generated"] else None,
        "diversity": {"distinct_scenarios": len(scenarios_used),
                      "mean_pairwise_similarity": similarity_mean,
                      "mean_pairwise_3gram_distance": distance,
                      "distinct_requests": len({d.direction for d in kept})},
    }


def _mean_pairwise_similarity(dreams: list[Example], limit: int = 200) -> float | None:
    sample = dreams[:limit]
    pairs = [(a, b) for i, a in enumerate(sample) for b in sample[i + 1 :]]
    if not pairs:
        return None
    return round(sum(similarity(a.direction, b.direction) for a, b in pairs) / len(pairs), 3)
