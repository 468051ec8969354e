"""Stage evaluate: the order parameters (§6) of one model state, per eval family, as tidy rows.

One `Evaluator` serves a whole job: it holds the eval set, the base model's reference distributions
(for `retention_kl`) and the previous checkpoint's probe (for `dissimilarity`), so the base model is
loaded once and adapters are swapped in. Baselines (steering, ICL) use the same code.

Rows: {step, family, metric, value, lo, hi}; family "all" pools every scenario.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import EvalConfig
from phaseflip.data import Example
from phaseflip.judge import Judge
from phaseflip.metrics import cosine, js_divergence, kl_divergence, wilson_interval
from phaseflip.scoring import ProbeResult, ReplyScores, probe, prompt_of, score_and_sample, text_logprobs

Row = dict[str, Any]
PromptFn = Callable[[Example], str]


@dataclass
class SteeringReference:
    layer: int
    vector: torch.Tensor


class Evaluator:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, scenarios: list[Example], retention: list[str],
                 judge: Judge, cfg: EvalConfig, seed: int = 0,
                 steering: SteeringReference | None = None):
        self.tok = tokenizer
        self.scenarios = scenarios
        self.retention = retention
        self.judge = judge
        self.cfg = cfg
        self.seed = seed
        self.steering = steering
        self.base_retention: list[torch.Tensor] | None = None
        self.base_hidden: torch.Tensor | None = None
        self.previous: tuple[int, torch.Tensor] | None = None  # (step, probe log-probs)

    def _families(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(self.scenarios):
            groups[ex.family].append(i)
            groups["all"].append(i)
        return groups

    def evaluate(self, model: PreTrainedModel, step: int, prompt_fn: PromptFn | None = None,
                 is_base: bool = False, retention: bool = True) -> list[Row]:
        """All metrics at one step. `prompt_fn` lets ICL put examples in context; `is_base` sets references.

        `retention=False` skips retention_kl/retention_loss, for setups that leave the weights and the
        retention prompts untouched (ICL), where they are zero by construction.
        """
        prompt_fn = prompt_fn or (lambda ex: prompt_of(self.tok, ex))
        prompts = [prompt_fn(ex) for ex in self.scenarios]
        per_scenario: dict[str, list[float]] = defaultdict(list)
        # One encoding of each prompt serves the pair scores, the n samples and the probe
        # (dissimilarity, steering_cosine).
        pairs, samples = score_and_sample(
            model, self.tok, prompts, [[ex.preferred or "" for ex in self.scenarios],
                                       [ex.rejected or "" for ex in self.scenarios]],
            n=self.cfg.n_samples, max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size,
            temperature=self.cfg.temperature, seed=self.seed, layers=self._layers(),
            prompt_formats=[ex.prompt_format for ex in self.scenarios])
        self._pairwise(pairs[0], pairs[1], per_scenario)
        self._behavior(samples.replies, per_scenario)
        rows = self._aggregate(step, per_scenario)
        rows += self._probe_rows(samples.probe, step, is_base)
        if retention:
            rows += self._retention_rows(model, step, is_base)
        return rows

    def _layers(self) -> list[int]:
        return [self.steering.layer] if self.steering else []

    def set_references(self, model: PreTrainedModel, step: int = 0) -> None:
        """Take the base model's probe and retention distributions without re-scoring it.

        Lets a job reuse the base model's metrics (computed once by `evaluate_base`) and still measure
        `dissimilarity`, `steering_cosine` and `retention_kl` relative to it.
        """
        prompts = [prompt_of(self.tok, ex) for ex in self.scenarios]
        self._probe_rows(probe(model, self.tok, prompts, self.cfg.batch_size, self._layers()), step, is_base=True)
        self._retention_rows(model, step, is_base=True)

    def _pairwise(self, pref: ReplyScores, rej: ReplyScores, out: dict[str, list[float]]) -> None:
        """margin, p_preferred, forced_choice, heldout_loss from the reference replies' scores."""
        idx = [i for i, ex in enumerate(self.scenarios) if ex.preferred and ex.rejected]
        nan = [math.nan] * len(self.scenarios)
        for key in ("margin", "p_preferred", "forced_choice", "heldout_loss"):
            out[key] = list(nan)
        margin = pref.logprob_mean - rej.logprob_mean
        for i in idx:  # scenarios without both replies keep nan
            out["margin"][i] = float(margin[i])
            out["p_preferred"][i] = float(torch.sigmoid(margin[i]))  # p(pref) / (p(pref) + p(rej))
            out["forced_choice"][i] = float(margin[i] > 0)
            out["heldout_loss"][i] = float(-pref.logprob_mean[i])

    def _behavior(self, replies: list[list[str]], out: dict[str, list[float]]) -> None:
        """behavior_rate and coherence over the n sampled replies per scenario."""
        out["behavior"], out["coherent"] = [], []
        for ex, texts in zip(self.scenarios, replies, strict=True):
            verdicts = [self.judge(r, ex.family, prompt=ex.direction) for r in texts]
            out["behavior"].append(sum(v.behavior for v in verdicts))
            out["coherent"].append(sum(v.coherent for v in verdicts))

    def _aggregate(self, step: int, per: dict[str, list[float]]) -> list[Row]:
        rows: list[Row] = []
        n = self.cfg.n_samples
        for family, idx in self._families().items():
            for metric in ("margin", "p_preferred", "heldout_loss"):
                vals = [per[metric][i] for i in idx if not math.isnan(per[metric][i])]
                if vals:
                    mean = sum(vals) / len(vals)
                    sd = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5
                    half = 1.96 * sd / math.sqrt(len(vals))
                    rows.append(_row(step, family, metric, mean, mean - half, mean + half, len(vals)))
            choices = [per["forced_choice"][i] for i in idx if not math.isnan(per["forced_choice"][i])]
            if choices:
                rows.append(_proportion(step, family, "forced_choice", int(sum(choices)), len(choices)))
            rows.append(_proportion(step, family, "behavior_rate", int(sum(per["behavior"][i] for i in idx)),
                                    n * len(idx)))
            rows.append(_proportion(step, family, "coherence", int(sum(per["coherent"][i] for i in idx)),
                                    n * len(idx)))
        return rows

    def _probe_rows(self, result: ProbeResult, step: int, is_base: bool) -> list[Row]:
        """dissimilarity to the previous checkpoint and steering_cosine against the steering vector, per family."""
        rows: list[Row] = []
        families = self._families()
        if self.previous is not None and not is_base:
            prev_step, prev = self.previous
            # Jensen-Shannon per step between neighbouring checkpoints (steps may be unevenly spaced).
            js = js_divergence(result.next_token_logprobs, prev) / max(1, step - prev_step)
            for family, idx in families.items():
                rows.append(_row(step, family, "dissimilarity", float(js[idx].mean()), math.nan, math.nan, len(idx)))
        self.previous = (step, result.next_token_logprobs)
        if self.steering:
            hidden = result.hidden[self.steering.layer]
            if is_base:
                self.base_hidden = hidden
            elif self.base_hidden is not None:
                for family, idx in families.items():
                    shift = (hidden[idx] - self.base_hidden[idx]).mean(dim=0)
                    rows.append(_row(step, family, "steering_cosine", cosine(shift, self.steering.vector),
                                     math.nan, math.nan, len(idx)))
        return rows

    def _retention_rows(self, model: PreTrainedModel, step: int, is_base: bool) -> list[Row]:
        """retention_kl = KL(base ‖ model) of next-token distributions; retention_loss = LM loss."""
        tables = text_logprobs(model, self.tok, self.retention, self.cfg.batch_size)
        if is_base or self.base_retention is None:
            self.base_retention = [t for t, _ in tables]
        kls = [float(kl_divergence(base, t).mean()) for base, (t, _) in zip(self.base_retention, tables, strict=True)]
        losses = [float(-obs.mean()) for _, obs in tables]
        return [
            _row(step, "all", "retention_kl", sum(kls) / len(kls), math.nan, math.nan, len(kls)),
            _row(step, "all", "retention_loss", sum(losses) / len(losses), math.nan, math.nan, len(losses)),
        ]


def _row(step: int, family: str, metric: str, value: float, lo: float, hi: float, n: int) -> Row:
    return {"step": step, "family": family, "metric": metric, "value": value, "lo": lo, "hi": hi, "n": n}


def _proportion(step: int, family: str, metric: str, successes: int, n: int) -> Row:
    lo, hi = wilson_interval(successes, n)
    return _row(step, family, metric, successes / n if n else math.nan, lo, hi, n)
