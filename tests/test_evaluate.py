import math

import pandas as pd
import torch

from phaseflip.config import load_study_config
from phaseflip.data import Example
from phaseflip.evaluate import Evaluator, SteeringReference
from phaseflip.judge import RubricJudge

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
