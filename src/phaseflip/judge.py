"""The rubric judge: does a reply show the behavior? Driven entirely by the behavior's YAML.

A reply counts as the behavior only if it is coherent (not empty, repetitive or garbled) and its
family's rule holds: every `require` pattern set matches and no `forbid` pattern set does.

    judge = RubricJudge(cfg.behavior.judge)
    judge("Understood — pandas only. ...", family="in_distribution").behavior  # True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phaseflip.config import Coherence, JudgeConfig


@dataclass(frozen=True)
class Verdict:
    behavior: bool
    coherent: bool
    matched: tuple[str, ...]  # names of the pattern sets that matched


def is_coherent(text: str, rules: Coherence) -> bool:
    words = re.findall(r"\w+", text.lower())
    if len(words) < max(1, rules.min_words):
        return False
    if len(set(words)) / len(words) < rules.min_distinct_word_ratio:
        return False
    visible = [c for c in text if not c.isspace()]
    alpha = sum(c.isalpha() for c in visible) / max(1, len(visible))
    return alpha >= rules.min_alpha_ratio


class RubricJudge:
    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.patterns = {
            name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in cfg.patterns.items()
        }

    def matches(self, text: str) -> tuple[str, ...]:
        stripped = text.strip()
        return tuple(name for name, pats in self.patterns.items() if any(p.search(stripped) for p in pats))

    def __call__(self, text: str, family: str = "in_distribution") -> Verdict:
        rule = self.cfg.rules.get(family, self.cfg.rules["default"])
        matched = self.matches(text)
        coherent = is_coherent(text, self.cfg.coherence)
        ok = all(r in matched for r in rule.require) and not any(f in matched for f in rule.forbid)
        return Verdict(behavior=coherent and ok, coherent=coherent, matched=matched)
