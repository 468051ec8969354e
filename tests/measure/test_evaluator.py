import math
import random

import pandas as pd
import torch

from phaseflip.config import AdaptiveSampling, load_study_config
from phaseflip.data import Example
from phaseflip.measure.evaluator import Evaluator, SteeringReference, best_step
from phaseflip.measure.judge import RubricJudge, Verdict

SCENARIOS = [
    Example(id=f"e{i}", family=fam, messages=[{"role": "user", "content": f"Task {i}: use tabs, not spaces."}],
            preferred="Understood — tabs only.", rejected="Sure! Alternatively, use spaces.")
    for i, fam in enumerate(["in_distribution", "in_distribution", "french", "inverted"])
]
METRICS = {"margin", "p_preferred", "forced_choice", "heldout_loss", "behavior_rate", "coherence"}


def evaluator(tok, steering=None) -> Evaluator:  # type: ignore[no-untyped-def]
    cfg = load_study_config({"study": "smoke"})
    return Evaluator(tok, SCENARIOS, ["The sky is blue.", "Two plus two is four."], RubricJudge(cfg.behavior.judge),
                     cfg.eval, seed=0, steering=steering)


def test_every_metric_per_family_and_base_references(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    ev = evaluator(tok, SteeringReference(layer=1, vector=torch.randn(model.config.hidden_size)))
    table = pd.DataFrame(ev.evaluate(model, step=0, is_base=True))
    for family in ["all", "in_distribution", "french", "inverted"]:
        assert METRICS <= set(table[table.family == family].metric), family
    kl = table[table.metric == "retention_kl"].value.iloc[0]
    assert kl == 0.0  # the base model against itself
    rate = table[(table.metric == "behavior_rate") & (table.family == "all")].iloc[0]
    assert 0 <= rate.lo <= rate.value <= rate.hi <= 1
    # A changed model: dissimilarity and steering_cosine appear, retention_kl becomes positive.
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(3.0)
    later = pd.DataFrame(ev.evaluate(model, step=2))
    assert later[later.metric == "retention_kl"].value.iloc[0] > 0
    for family in ["all", "in_distribution", "french", "inverted"]:  # per family, like every other metric
        rows = later[later.family == family].set_index("metric")
        assert rows.value["dissimilarity"] > 0, family
        assert not math.isnan(rows.value["steering_cosine"]), family


def test_identical_model_has_zero_dissimilarity_and_same_numbers(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    ev = evaluator(tok)
    first = pd.DataFrame(ev.evaluate(model, step=0, is_base=True))
    second = pd.DataFrame(ev.evaluate(model, step=1))
    assert second[second.metric == "dissimilarity"].value.iloc[0] < 1e-5  # float noise only
    keep = first.metric.isin(METRICS)
    assert first[keep].value.tolist() == second[second.metric.isin(METRICS)].value.tolist()  # seeded sampling


class CoinJudge:
    """A judge that calls a reply the behavior with a fixed probability per family (seeded)."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates
        self.rng = random.Random(0)

    def __call__(self, text: str, family: str = "in_distribution", prompt: str | None = None) -> Verdict:
        return Verdict(behavior=self.rng.random() < self.rates.get(family, 0.0), coherent=True, matched=())


def coin_evaluator(tok, rates: dict[str, float], n_id: int = 10, n_ood: int = 4):  # type: ignore[no-untyped-def]
    cfg = load_study_config({"study": "smoke"}).eval.model_copy(
        update={"n_samples": 2, "max_new_tokens": 2, "ood_subset_per_family": 3,
                "adaptive": AdaptiveSampling(band=(0.35, 0.65), samples_per_round=2, max_samples=8,
                                             ood_half_width=0.15, ood_max_samples=6)})
    scenarios = [Example(id=f"i{i}", family="in_distribution", messages=[{"role": "user", "content": f"Do {i}."}],
                         preferred="Done.", rejected="No.") for i in range(n_id)]
    scenarios += [Example(id=f"o{i}", family="french", messages=[{"role": "user", "content": f"Fais {i}."}],
                          preferred="Fait.", rejected="Non.") for i in range(n_ood)]
    return Evaluator(tok, scenarios, ["The sky is blue."], CoinJudge(rates), cfg, seed=0)


def _n(table: pd.DataFrame, family: str) -> int:
    return int(table[(table.metric == "behavior_rate") & (table.family == family)].n.iloc[0])


def test_adaptive_sampling_stops_early_when_clear_and_continues_near_threshold(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    clear = pd.DataFrame(coin_evaluator(tok, {"in_distribution": 0.0})
                         .evaluate(model, step=1, sample="in_distribution"))
    assert _n(clear, "in_distribution") == 10 * 2  # the first round already lies below the band: stop
    near = pd.DataFrame(coin_evaluator(tok, {"in_distribution": 0.5})
                        .evaluate(model, step=1, sample="in_distribution"))
    assert _n(near, "in_distribution") == 10 * 8  # a coin at the threshold never clears the band: the cap
    # Only in-distribution was sampled: no out-of-distribution or pooled rate, but pairwise metrics for all.
    assert set(near[near.metric == "behavior_rate"].family) == {"in_distribution"}
    assert {"in_distribution", "french", "all"} <= set(near[near.metric == "p_preferred"].family)
    # Between Q5's checkpoints the other families are scored on a cheap subset (eval.ood_subset_per_family).
    pp = near[near.metric == "p_preferred"].set_index("family").n
    assert pp["in_distribution"] == 10 and pp["french"] == 3


def test_ood_sampling_reaches_its_half_width_and_is_deterministic(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    ev = coin_evaluator(tok, {"in_distribution": 1.0, "french": 0.0}, n_ood=10)
    table = pd.DataFrame(ev.evaluate(model, step=3, sample="all"))
    fr = table[(table.metric == "behavior_rate") & (table.family == "french")].iloc[0]
    assert (fr.hi - fr.lo) / 2 <= 0.15 and fr.n == 10 * 2
    assert {"wilson_lo", "wilson_hi"} <= set(table.columns)
    counts = pd.DataFrame(ev.scenario_rows)
    assert set(counts.columns) >= {"step", "scenario_id", "family", "margin", "behavior_k", "n"}
    assert counts[counts.family == "french"].n.eq(2).all()
    again = pd.DataFrame(coin_evaluator(tok, {"in_distribution": 1.0, "french": 0.0}, n_ood=10)
                         .evaluate(model, step=3, sample="all"))
    assert table.value.tolist() == again.value.tolist()


def test_sample_ood_adds_the_other_families_to_an_evaluated_step(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    ev = coin_evaluator(tok, {"in_distribution": 0.0, "french": 1.0})
    ev.evaluate(model, step=5, sample="in_distribution")
    extra = pd.DataFrame(ev.sample_ood(model, step=5))
    assert {"french", "all"} <= set(extra[extra.metric == "behavior_rate"].family)
    assert extra[(extra.family == "french") & (extra.metric == "behavior_rate")].value.iloc[0] == 1.0
    # Q5 reads the pairwise metrics at this step too: every french scenario is scored now, not the subset.
    assert extra[extra.metric == "p_preferred"].set_index("family").n["french"] == 4


def test_sample_ood_scores_families_skipped_between_checkpoints(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    ev = coin_evaluator(tok, {"in_distribution": 0.0, "french": 1.0})
    ev.cfg = ev.cfg.model_copy(update={"ood_subset_per_family": 0})
    first = pd.DataFrame(ev.evaluate(model, step=5, sample="in_distribution"))
    assert "french" not in set(first[first.metric == "p_preferred"].family)
    extra = pd.DataFrame(ev.sample_ood(model, step=5))
    assert extra[extra.metric == "p_preferred"].set_index("family").n["french"] == 4


def test_best_step_is_the_highest_in_distribution_rate() -> None:
    rows = [{"step": s, "family": "in_distribution", "metric": "behavior_rate", "value": v}
            for s, v in [(0, 0.9), (2, 0.1), (4, 0.8), (6, 0.8)]]
    assert best_step(rows) == 6  # the base model (step 0) is not a checkpoint; ties go to the later step


class _RecordingEvaluator:
    """Stands in for Evaluator in evaluate_run: records what each checkpoint was asked to sample."""

    def __init__(self, rates: dict[int, float]) -> None:
        self.rates, self.calls, self.scenario_rows = rates, [], []  # type: ignore[var-annotated]

    def evaluate(self, model, step, sample):  # type: ignore[no-untyped-def]
        self.calls.append((step, sample))
        return [{"step": step, "family": "in_distribution", "metric": "behavior_rate", "value": self.rates[step]}]

    def sample_ood(self, model, step):  # type: ignore[no-untyped-def]
        self.calls.append((step, "ood"))
        return [{"step": step, "family": "all", "metric": "behavior_rate", "value": 0.5}]


def test_evaluate_run_samples_other_families_at_last_and_best_but_not_for_a_control(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from contextlib import nullcontext

    from phaseflip.interventions.train import checkpoints
    from phaseflip.measure.evaluator import evaluate_run

    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step:04d}").mkdir(parents=True)
    found = checkpoints(tmp_path)
    rates = {2: 0.1, 4: 0.9, 6: 0.6}  # the best checkpoint (4) is not the last (6)
    real = _RecordingEvaluator(rates)
    rows, _ = evaluate_run(real, None, found, lambda folder: nullcontext(), [], [])  # type: ignore[arg-type]
    assert real.calls == [(2, "in_distribution"), (4, "in_distribution"), (6, "all"), (4, "ood")]
    assert {(r["step"], r["family"]) for r in rows} >= {(4, "all"), (6, "in_distribution")}
    control = _RecordingEvaluator(rates)
    evaluate_run(control, None, found, lambda folder: nullcontext(), [], [], other_families=False)  # type: ignore[arg-type]
    assert control.calls == [(2, "in_distribution"), (4, "in_distribution"), (6, "in_distribution")]


def test_evaluate_run_without_at_best_samples_other_families_at_the_last_checkpoint_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from contextlib import nullcontext

    from phaseflip.interventions.train import checkpoints
    from phaseflip.measure.evaluator import evaluate_run

    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step:04d}").mkdir(parents=True)
    fixed = _RecordingEvaluator({2: 0.1, 4: 0.9, 6: 0.6})  # the best (4) is not the last (6): still not sampled
    rows, _ = evaluate_run(fixed, None, checkpoints(tmp_path), lambda folder: nullcontext(), [], [],  # type: ignore[arg-type]
                           at_best=False)
    assert fixed.calls == [(2, "in_distribution"), (4, "in_distribution"), (6, "all")]
    assert (4, "all") not in {(r["step"], r["family"]) for r in rows}


def test_other_families_share_each_sampling_round_and_stop_on_their_own_rule(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A clear family stops after the first round, a coin at 0.5 keeps sampling to the cap; while both
    sample, one call decodes both (10-scenario families alone are small decoding batches)."""
    import phaseflip.measure.evaluator as evaluator_module

    model, tok = tiny
    ev = coin_evaluator(tok, {"in_distribution": 0.0, "french": 0.0, "inverted": 0.5}, n_ood=10)
    ev.scenarios = ev.scenarios + [Example(id=f"v{i}", family="inverted", preferred="Yes.", rejected="No.",
                                           messages=[{"role": "user", "content": f"Options for {i}?"}])
                                   for i in range(10)]
    sampled_calls: list[set[str]] = []
    real = evaluator_module.score_and_sample

    def spy(model, tok, prompts, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("n"):
            sampled_calls.append({ev.scenarios[next(i for i, p in enumerate(ev._prompts(None)) if p == q)].family
                                  for q in prompts})
        return real(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(evaluator_module, "score_and_sample", spy)
    ev.evaluate(model, step=2, sample="in_distribution")
    sampled_calls.clear()
    table = pd.DataFrame(ev.sample_ood(model, step=2))
    assert sampled_calls[0] == {"french", "inverted"}  # round one: both families in one call
    assert all(c == {"inverted"} for c in sampled_calls[1:]) and len(sampled_calls) > 1  # french stopped
    assert _n(table, "french") == 10 * 2 and _n(table, "inverted") == 10 * 6  # its own rule; the other the cap
