"""The evaluator: the order parameters (docs/design.md §6) of one model state, per eval family, as tidy rows.

One `Evaluator` serves a whole job: it holds the eval set, the base model's reference distributions
(for `retention_kl`) and the previous checkpoint's probe (for `dissimilarity`), so the base model is
loaded once and adapters are swapped in. Baselines (steering, ICL) use the same code.

Every scenario is scored on its reference pair at every checkpoint (cheap: one forward pass). Replies
are sampled adaptively (docs/design.md §6, `eval.adaptive`): in-distribution scenarios in rounds until the rate's
interval clears the band around the flip threshold; out-of-distribution families only where Q5 needs
them (the base model, each run's last and best checkpoint), until their interval is narrow enough.

Rows: {step, family, metric, value, lo, hi, n, wilson_lo, wilson_hi}; family "all" pools every
scenario. For a rate, `lo`/`hi` is the clustered interval (samples of one scenario are correlated,
`stats.intervals.clustered_interval`), `wilson_*` the binomial one that treats samples as independent, and `n`
the number of sampled replies. `scenario_rows` holds the per-scenario counts behind them (the
transition fit and the forecasts bootstrap over scenarios).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phaseflip.config import EvalConfig
from phaseflip.data import IN_DISTRIBUTION, Example
from phaseflip.measure.judge import Judge
from phaseflip.model.scoring import ProbeResult, ReplyScores, Samples, probe, prompt_of, score_and_sample, text_logprobs
from phaseflip.stats.divergences import cosine, js_divergence, kl_divergence
from phaseflip.stats.intervals import clustered_interval, wilson_interval

Row = dict[str, Any]
PromptFn = Callable[[Example], str]
Sampled = Literal["in_distribution", "all"]
# Round r of sampling draws with seed + ROUND_SEED * r, so rounds never repeat each other's draws.
ROUND_SEED = 7919
PAIRWISE = ("margin", "p_preferred", "forced_choice", "heldout_loss")


# A per-scenario row of `Evaluator.scenario_rows` (scenarios.csv, and the baselines' *_scenarios.csv)
SCENARIO_COLUMNS = ("step", "scenario_id", "family", "margin", "p_preferred", "behavior_k", "coherent_k", "n")


@dataclass
class SteeringReference:
    layer: int
    vector: torch.Tensor


@dataclass
class Counts:
    """Per scenario: sampled replies judged as the behavior, judged coherent, and sampled in all."""

    behavior: list[int]
    coherent: list[int]
    trials: list[int]

    @classmethod
    def empty(cls, n: int) -> Counts:
        return cls([0] * n, [0] * n, [0] * n)


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
        self.base_hidden: dict[int, torch.Tensor] = {}  # scenario index -> base hidden state (steering_cosine)
        # (step, scenario index -> probe log-probs) of the previous checkpoint, for dissimilarity
        self.previous: tuple[int, dict[int, torch.Tensor]] | None = None
        self.scenario_rows: list[Row] = []  # per (step, scenario): pairwise metrics and sample counts
        self._counts: dict[int, Counts] = {}  # step -> counts so far (a later OOD pass adds to them)
        self._pairs: dict[int, dict[str, list[float]]] = {}
        self._scored_at: dict[int, set[int]] = {}

    def _families(self, idx: list[int] | None = None) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i in range(len(self.scenarios)) if idx is None else idx:
            groups[self.scenarios[i].family].append(i)
            groups["all"].append(i)
        return groups

    def _scored(self, sample: Sampled) -> list[int]:
        """Scenarios scored at a step: all where every family is sampled; else every in-distribution one
        and the first `ood_subset_per_family` of each other family (their continuous curves, cheaply)."""
        if sample == "all" or self.cfg.ood_every_checkpoint:
            return list(range(len(self.scenarios)))
        seen: dict[str, int] = defaultdict(int)
        keep = []
        for i, ex in enumerate(self.scenarios):
            if ex.family == IN_DISTRIBUTION or seen[ex.family] < self.cfg.ood_subset_per_family:
                keep.append(i)
                seen[ex.family] += ex.family != IN_DISTRIBUTION
        return keep

    def _prompts(self, prompt_fn: PromptFn | None) -> list[str]:
        prompt_fn = prompt_fn or (lambda ex: prompt_of(self.tok, ex))
        return [prompt_fn(ex) for ex in self.scenarios]

    def evaluate(self, model: PreTrainedModel, step: int, prompt_fn: PromptFn | None = None,
                 is_base: bool = False, retention: bool = True, sample: Sampled = "all") -> list[Row]:
        """All metrics at one step. `prompt_fn` lets ICL put examples in context; `is_base` sets references.

        `sample`: which families get sampled replies (behavior_rate, coherence): "all", or only
        "in_distribution" (a run's intermediate checkpoints; `sample_ood` adds the rest later).
        `retention=False` skips retention_kl/retention_loss, for setups that leave the weights and the
        retention prompts untouched (ICL), where they are zero by construction.
        """
        prompts = self._prompts(prompt_fn)
        scored = self._scored(sample)
        # One encoding of each prompt serves the pair scores and the probe (dissimilarity, steering_cosine).
        self._pairs[step] = {key: [math.nan] * len(self.scenarios) for key in PAIRWISE}
        self._scored_at[step] = set()
        probed = self._score_pairs(model, prompts, step, scored, self._layers())
        self._counts[step] = Counts.empty(len(self.scenarios))
        families = self._families()
        self._sample_adaptively(model, prompts, step, [families[IN_DISTRIBUTION]], _outside_band(self.cfg))
        if sample == "all" or self.cfg.ood_every_checkpoint:
            self._sample_ood(model, prompts, step)
        rows = self._aggregate(step)
        rows += self._probe_rows(probed.probe, scored, step, is_base)
        if retention:
            rows += self._retention_rows(model, step, is_base)
        return rows

    def sample_ood(self, model: PreTrainedModel, step: int, prompt_fn: PromptFn | None = None) -> list[Row]:
        """Add the out-of-distribution families to an evaluated step: the pair scores of the scenarios not
        scored there yet, and sampled replies. Returns the step's rate and pairwise rows, recomputed."""
        if step not in self._counts:
            raise ValueError(f"step {step} was not evaluated by this Evaluator")
        prompts = self._prompts(prompt_fn)
        missing = [i for i in range(len(self.scenarios)) if i not in self._scored_at[step]]
        if missing:
            self._score_pairs(model, prompts, step, missing)
        self._sample_ood(model, prompts, step)
        return self._aggregate(step)

    def _score_pairs(self, model: PreTrainedModel, prompts: list[str], step: int, idx: list[int],
                     layers: list[int] | None = None) -> Samples:
        """Score scenarios `idx` on their reference pairs into the step's pairwise metrics; the probe of
        the same prompt encoding is returned (row j = scenario idx[j])."""
        pairs, probed = score_and_sample(
            model, self.tok, [prompts[i] for i in idx],
            [[self.scenarios[i].preferred or "" for i in idx], [self.scenarios[i].rejected or "" for i in idx]],
            batch_size=self.cfg.batch_size, seed=self.seed, layers=layers or [],
            prompt_formats=[self.scenarios[i].prompt_format for i in idx])
        self._pairwise(pairs[0], pairs[1], idx, self._pairs[step])
        self._scored_at[step] |= set(idx)
        return probed

    def _sample_ood(self, model: PreTrainedModel, prompts: list[str], step: int) -> None:
        """Every other family, each to its own stopping rule, the families still sampling decoded together
        in one call per round (a family of 10 scenarios alone is too small a batch to decode efficiently)."""
        families = [idx for family, idx in self._families().items() if family not in ("all", IN_DISTRIBUTION)]
        self._sample_adaptively(model, prompts, step, families, _narrow_enough(self.cfg),
                                cap=self.cfg.adaptive.ood_max_samples)

    def _sample_adaptively(self, model: PreTrainedModel, prompts: list[str], step: int, groups: list[list[int]],
                           done: Callable[[tuple[float, float]], bool], cap: int | None = None) -> None:
        """Sample replies to each group of scenarios in rounds until `done(interval)` of that group's rate
        or the per-scenario cap; the groups still sampling share each round's call."""
        counts = self._counts[step]
        cap = cap or self.cfg.adaptive.max_samples
        round_no = 0
        while True:
            active = [idx for idx in groups if idx and not self._group_done(counts, idx, done, cap)]
            if not active:
                break
            have = counts.trials[active[0][0]]  # every active group has had the same rounds
            n = min(self.cfg.n_samples if not have else self.cfg.adaptive.samples_per_round, cap - have)
            idx = [i for group in active for i in group]
            # The seed depends on the round and on which scenarios are sampled, not on the checkpoint:
            # equal models give equal numbers (a test relies on it).
            seed = self.seed + ROUND_SEED * round_no + idx[0]
            _, samples = score_and_sample(
                model, self.tok, [prompts[i] for i in idx], n=n, max_new_tokens=self.cfg.max_new_tokens,
                batch_size=self.cfg.batch_size, temperature=self.cfg.temperature, seed=seed,
                prompt_formats=[self.scenarios[i].prompt_format for i in idx])
            for i, texts in zip(idx, samples.replies, strict=True):
                ex = self.scenarios[i]
                verdicts = [self.judge(r, ex.family, prompt=ex.direction) for r in texts]
                counts.behavior[i] += sum(v.behavior for v in verdicts)
                counts.coherent[i] += sum(v.coherent for v in verdicts)
                counts.trials[i] += len(texts)
            round_no += 1

    @staticmethod
    def _group_done(counts: Counts, idx: list[int], done: Callable[[tuple[float, float]], bool], cap: int) -> bool:
        have = counts.trials[idx[0]]
        return have >= cap or bool(have) and done(
            clustered_interval([counts.behavior[i] for i in idx], [counts.trials[i] for i in idx]))

    def _layers(self) -> list[int]:
        return [self.steering.layer] if self.steering else []

    def set_references(self, model: PreTrainedModel, step: int = 0) -> None:
        """Take the base model's probe and retention distributions without re-scoring it.

        Lets a job reuse the base model's metrics (computed once by `evaluate_base`) and still measure
        `dissimilarity`, `steering_cosine` and `retention_kl` relative to it.
        """
        prompts = [prompt_of(self.tok, ex) for ex in self.scenarios]
        every = list(range(len(self.scenarios)))
        self._probe_rows(probe(model, self.tok, prompts, self.cfg.batch_size, self._layers()), every, step,
                         is_base=True)
        self._retention_rows(model, step, is_base=True)

    def _pairwise(self, pref: ReplyScores, rej: ReplyScores, scored: list[int], out: dict[str, list[float]]) -> None:
        """margin, p_preferred, forced_choice, heldout_loss from the reference replies' scores (row j of the
        scores is scenario scored[j]) into the step's table `out`; scenarios without both replies keep nan."""
        margin = pref.logprob_mean - rej.logprob_mean
        for j, i in enumerate(scored):
            ex = self.scenarios[i]
            if ex.preferred and ex.rejected:
                out["margin"][i] = float(margin[j])
                out["p_preferred"][i] = float(torch.sigmoid(margin[j]))  # p(pref) / (p(pref) + p(rej))
                out["forced_choice"][i] = float(margin[j] > 0)
                out["heldout_loss"][i] = float(-pref.logprob_mean[j])

    def _aggregate(self, step: int) -> list[Row]:
        per, counts = self._pairs[step], self._counts[step]
        rows: list[Row] = []
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
                rows.append(_rate(step, family, "forced_choice", [int(c) for c in choices], [1] * len(choices)))
            sampled = [i for i in idx if counts.trials[i] > 0]
            if sampled and len(sampled) == len(idx):  # a family's rate only when all its scenarios were sampled
                trials = [counts.trials[i] for i in sampled]
                rows.append(_rate(step, family, "behavior_rate", [counts.behavior[i] for i in sampled], trials))
                rows.append(_rate(step, family, "coherence", [counts.coherent[i] for i in sampled], trials))
        self.scenario_rows = [r for r in self.scenario_rows if r["step"] != step]
        self.scenario_rows += [
            dict(zip(SCENARIO_COLUMNS, (step, ex.id, ex.family, per["margin"][i], per["p_preferred"][i],
                                        counts.behavior[i], counts.coherent[i], counts.trials[i]), strict=True))
            for i, ex in enumerate(self.scenarios) if i in self._scored_at[step] or counts.trials[i]]
        return rows

    def _probe_rows(self, result: ProbeResult, scored: list[int], step: int, is_base: bool) -> list[Row]:
        """dissimilarity to the previous checkpoint and steering_cosine against the steering vector, per
        family, over the scenarios probed at both (row j of `result` is scenario scored[j])."""
        rows: list[Row] = []
        current = {i: result.next_token_logprobs[j] for j, i in enumerate(scored)}
        if self.previous is not None and not is_base:
            prev_step, prev = self.previous
            both = [i for i in scored if i in prev]
            if both:
                # Jensen-Shannon per step between neighbouring checkpoints (steps may be unevenly spaced).
                per_step = js_divergence(torch.stack([current[i] for i in both]),
                                         torch.stack([prev[i] for i in both])) / max(1, step - prev_step)
                js: dict[int, float] = dict(zip(both, per_step.tolist(), strict=True))
                for family, idx in self._families(both).items():
                    rows.append(_row(step, family, "dissimilarity", sum(js[i] for i in idx) / len(idx), math.nan,
                                     math.nan, len(idx)))
        self.previous = (step, current)
        if self.steering:
            hidden = {i: result.hidden[self.steering.layer][j] for j, i in enumerate(scored)}
            if is_base:
                self.base_hidden = hidden
            elif self.base_hidden:
                for family, idx in self._families([i for i in scored if i in self.base_hidden]).items():
                    shift = torch.stack([hidden[i] - self.base_hidden[i] for i in idx]).mean(dim=0)
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


def _outside_band(cfg: EvalConfig) -> Callable[[tuple[float, float]], bool]:
    low, high = cfg.adaptive.band
    return lambda interval: interval[1] < low or interval[0] > high


def _narrow_enough(cfg: EvalConfig) -> Callable[[tuple[float, float]], bool]:
    return lambda interval: (interval[1] - interval[0]) / 2 <= cfg.adaptive.ood_half_width


def _row(step: int, family: str, metric: str, value: float, lo: float, hi: float, n: int) -> Row:
    return {"step": step, "family": family, "metric": metric, "value": value, "lo": lo, "hi": hi, "n": n,
            "wilson_lo": math.nan, "wilson_hi": math.nan}


def _rate(step: int, family: str, metric: str, successes: list[int], trials: list[int]) -> Row:
    """A rate over scenarios: clustered interval (primary) and the independent-samples Wilson one beside it."""
    k, n = sum(successes), sum(trials)
    lo, hi = clustered_interval(successes, trials)
    row = _row(step, family, metric, k / n if n else math.nan, lo, hi, n)
    row["wilson_lo"], row["wilson_hi"] = wilson_interval(k, n)
    return row


def best_step(rows: list[Row]) -> int | None:
    """The checkpoint (step > 0) with the highest in-distribution behavior_rate; ties: later step."""
    rates = [(r["value"], r["step"]) for r in rows
             if r["metric"] == "behavior_rate" and r["family"] == IN_DISTRIBUTION and r["step"] > 0]
    return max(rates)[1] if rates else None


def replace_rows(rows: list[Row], extra: list[Row], key: str, value: Any) -> list[Row]:
    """`rows` with those at `key == value` whose (family, metric) `extra` recomputes replaced by `extra`
    (what `Evaluator.sample_ood` returns for a step it added the other families to)."""
    replaced = {(r["family"], r["metric"]) for r in extra}
    return [r for r in rows if r[key] != value or (r["family"], r["metric"]) not in replaced] + extra


def evaluate_run(evaluator: Evaluator, model: PreTrainedModel, found: list[tuple[int, Path]],
                 load_checkpoint: Callable[[Path], Any], base_rows: list[Row],
                 base_scenarios: list[Row], other_families: bool = True, at_best: bool = True,
                 label: str = "run") -> tuple[list[Row], list[Row]]:
    """Every checkpoint of a run (the base model's rows as step 0): metric rows and per-scenario rows.

    In-distribution replies are sampled at every checkpoint; the other families at the last checkpoint
    and, with `at_best`, once all are seen, at the best one (Q5 compares those with the base model;
    `eval.ood_at_best`). A negative control
    (`other_families=False`) samples in-distribution only: no answer reads its other families, and
    they cost ~70 s per checkpoint on a CPU.
    `found` is the run's (step, checkpoint folder) list, in step order; `load_checkpoint(folder)` puts a
    checkpoint's weights in `model` and returns a context manager.
    """
    from tqdm import tqdm

    rows = list(base_rows)
    for step, folder in tqdm(found, desc=f"evaluate {label}", unit="ckpt"):
        with load_checkpoint(folder):
            last = step == found[-1][0]
            sample: Sampled = "all" if last and other_families else "in_distribution"
            rows += evaluator.evaluate(model, step=step, sample=sample)
    best = best_step(rows)
    if other_families and at_best and best is not None and best != found[-1][0]:
        with load_checkpoint(dict(found)[best]):
            extra = evaluator.sample_ood(model, best)
        rows = replace_rows(rows, extra, "step", best)
    return rows, list(base_scenarios) + evaluator.scenario_rows
