"""Judges: does a reply show the behavior? Driven entirely by the behavior's YAML (docs/design.md §6).

`rubric` (exact, offline): a reply counts as the behavior only if it is coherent (not empty, repetitive
or garbled) and its family's rule holds: every `require` pattern set matches, no `forbid` pattern set
does, and, with `restates: true`, the reply's opening shares content words with the sentences of the
user's last turn that carry the direction (checked when the caller passes the prompt; skipped without).

`model`: any HF causal LM is shown the behavior's plain-English description, the user's message and the
reply, and asked "does the reply show the behavior?"; p(yes) / (p(yes) + p(no)) from the log-probs of
the answer tokens decides. The same coherence gate applies.

    judge = make_judge(cfg.behavior, model_dir="results/base_model")
    judge("Understood — pandas only. ...", family="in_distribution", prompt="Use pandas only.").behavior
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from phaseflip.config import BehaviorConfig, Coherence, ConfigError, JudgeConfig, Restatement

WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits and underscores split words
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Verdict:
    behavior: bool
    coherent: bool
    matched: tuple[str, ...]  # names of the pattern sets (or checks) that matched


class Judge(Protocol):
    def __call__(self, text: str, family: str = "in_distribution", prompt: str | None = None) -> Verdict: ...


def is_coherent(text: str, rules: Coherence) -> bool:
    words = re.findall(r"\w+", text.lower())
    if len(words) < max(1, rules.min_words):
        return False
    if len(set(words)) / len(words) < rules.min_distinct_word_ratio:
        return False
    visible = [c for c in text if not c.isspace()]
    alpha = sum(c.isalpha() for c in visible) / max(1, len(visible))
    return alpha >= rules.min_alpha_ratio


def _stems(text: str, cfg: Restatement, stop: set[str]) -> set[str]:
    words = (w.lower() for w in WORD.findall(text))
    return {w[: cfg.stem_chars] for w in words if len(w) >= cfg.min_word_chars and w not in stop}


def direction_text(prompt: str, markers: Sequence[re.Pattern[str]]) -> str:
    """The sentences of a user turn that carry its direction (all of it when no marker matches)."""
    sentences = [s for s in SENTENCE_END.split(prompt) if s.strip()]
    marked = [s for s in sentences if any(m.search(s) for m in markers)]
    return " ".join(marked) if marked else prompt


def restates(reply: str, prompt: str, cfg: Restatement, markers: Sequence[re.Pattern[str]] = ()) -> bool:
    """The reply's opening shares at least `min_shared_words` content words with the direction."""
    stop = {w.lower() for w in cfg.stopwords}
    opening = " ".join(reply.split()[: cfg.window_words])
    shared = _stems(opening, cfg, stop) & _stems(direction_text(prompt, markers), cfg, stop)
    return len(shared) >= cfg.min_shared_words


class RubricJudge:
    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.patterns = {
            name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in cfg.patterns.items()
        }
        self.markers = [re.compile(p, re.IGNORECASE) for p in cfg.restatement.direction_markers]

    def matches(self, text: str) -> tuple[str, ...]:
        stripped = text.strip()
        return tuple(name for name, pats in self.patterns.items() if any(p.search(stripped) for p in pats))

    def __call__(self, text: str, family: str = "in_distribution", prompt: str | None = None) -> Verdict:
        rule = self.cfg.rules.get(family, self.cfg.rules["default"])
        matched = self.matches(text)
        coherent = is_coherent(text, self.cfg.coherence)
        ok = all(r in matched for r in rule.require) and not any(f in matched for f in rule.forbid)
        if prompt is not None and restates(text, prompt, self.cfg.restatement, self.markers):
            matched += ("restates",)
        if rule.restates and prompt is not None:  # without the prompt the check cannot be made
            ok = ok and "restates" in matched
        return Verdict(behavior=coherent and ok, coherent=coherent, matched=matched)


class ModelJudge:
    """A causal LM's yes/no answer to "does the reply show the behavior?", with the coherence gate."""

    def __init__(self, cfg: JudgeConfig, description: str, model_dir: str | Path, model: Any = None,
                 tokenizer: Any = None):
        self.cfg = cfg
        self.mcfg = cfg.model
        self.description = " ".join((self.mcfg.description or description).split())
        if model is None or tokenizer is None:
            from phaseflip.model import base_model

            model, tokenizer = base_model.load(model_dir)
        self.model, self.tok = model, tokenizer
        self.yes_ids = self._first_tokens(self.mcfg.yes_tokens)
        self.no_ids = self._first_tokens(self.mcfg.no_tokens)
        if set(self.yes_ids) & set(self.no_ids):
            raise ConfigError(f"judge.model: yes and no answers share a first token ({self.mcfg.yes_tokens} vs "
                              f"{self.mcfg.no_tokens})")

    def _first_tokens(self, words: list[str]) -> list[int]:
        return sorted({self.tok(w, add_special_tokens=False).input_ids[0] for w in words})

    def judge_prompt(self, text: str, prompt: str | None) -> str:
        question = self.mcfg.template.format(description=self.description, prompt=prompt or "(not shown)",
                                             reply=text.strip()[: self.mcfg.max_reply_chars])
        messages = [{"role": "user", "content": question}]
        if getattr(self.tok, "chat_template", None):
            rendered = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            rendered = question + "\n"
        return str(rendered) + self.mcfg.answer_prefix

    def p_yes(self, texts: Sequence[str], prompts: Sequence[str | None]) -> list[float]:
        """p(yes) / (p(yes) + p(no)) for each reply, from the next-token log-probs after the question."""
        import torch

        from phaseflip.model.scoring import probe

        questions = [self.judge_prompt(t, p) for t, p in zip(texts, prompts, strict=True)]
        logps = probe(self.model, self.tok, questions, self.mcfg.batch_size).next_token_logprobs
        yes = torch.logsumexp(logps[:, self.yes_ids], dim=1)
        no = torch.logsumexp(logps[:, self.no_ids], dim=1)
        return [float(v) for v in torch.sigmoid(yes - no)]

    def judge_many(self, texts: Sequence[str], families: Sequence[str],
                   prompts: Sequence[str | None] | None = None) -> list[Verdict]:
        prompts = list(prompts) if prompts is not None else [None] * len(texts)
        scores = self.p_yes(texts, prompts) if texts else []
        verdicts = []
        for text, score in zip(texts, scores, strict=True):
            coherent = is_coherent(text, self.cfg.coherence)
            yes = score >= self.mcfg.threshold
            matched = ("model_yes",) if yes else ()
            verdicts.append(Verdict(behavior=coherent and yes, coherent=coherent, matched=matched))
        return verdicts

    def __call__(self, text: str, family: str = "in_distribution", prompt: str | None = None) -> Verdict:
        return self.judge_many([text], [family], [prompt])[0]


def make_judge(cfg: BehaviorConfig | JudgeConfig, model_dir: str | Path | None = None,
               description: str | None = None) -> RubricJudge | ModelJudge:
    """The judge `cfg.judge.kind` names. The model judge reads `judge.model.path`, else `model_dir`."""
    judge_cfg = cfg.judge if isinstance(cfg, BehaviorConfig) else cfg
    if judge_cfg.kind == "rubric":
        return RubricJudge(judge_cfg)
    desc = description or (cfg.description if isinstance(cfg, BehaviorConfig) else None) or judge_cfg.model.description
    if not desc:
        raise ConfigError("judge.kind=model needs a description: behavior.description or judge.model.description")
    path = judge_cfg.model.path or model_dir
    if path is None:
        raise ConfigError("judge.kind=model needs judge.model.path or the study's base model folder")
    return ModelJudge(judge_cfg, desc, path)
