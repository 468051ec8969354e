"""The report's held-out selection: every setup chosen on one half of the scenarios, read on the other."""

import numpy as np
import pandas as pd

from phaseflip.report.answers import _q4_answer, held_out_lines, q5
from phaseflip.report.held_out import held_out_choices

SCENARIOS = [f"s{i:02d}" for i in range(20)]


def _counts(rng: np.random.Generator, rate: float, n: int = 8) -> list[tuple[str, int, int]]:
    return [(s, int(rng.binomial(n, rate)), n) for s in SCENARIOS]


def study(rng: np.random.Generator, steer_rate: float) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame,
                                                                 pd.DataFrame]:
    counts = {}
    for run_id, rates in {"a": [0.05, 0.5, 0.9], "b": [0.05, 0.3, 0.6]}.items():
        counts[run_id] = pd.DataFrame([{"step": step, "scenario_id": s, "k": k, "n": n}
                                       for step, rate in zip([0, 5, 10], rates, strict=True)
                                       for s, k, n in _counts(rng, rate)])
    candidates = pd.DataFrame({"run_id": ["a", "a", "b"], "step": [5, 10, 10]})
    steering = pd.DataFrame([{"training_set": "real", "layer": layer, "multiplier": 4.0, "step": 0, "scenario_id": s,
                              "family": fam, "behavior_k": k, "n": n}
                             for layer, rate in [(2, 0.2), (5, steer_rate)] for fam in ["in_distribution", "other"]
                             for s, k, n in _counts(rng, rate if fam == "in_distribution" else 0.99)])
    icl = pd.DataFrame([{"shots": shots, "step": 0, "scenario_id": s, "family": "in_distribution", "behavior_k": k,
                         "n": n} for shots, rate in [(1, 0.1), (3, 0.15)] for s, k, n in _counts(rng, rate)])
    return counts, candidates, steering, icl


def test_each_setup_is_chosen_on_one_half_and_read_on_the_other() -> None:
    counts, candidates, steering, icl = study(np.random.default_rng(0), steer_rate=0.4)
    held = held_out_choices(counts, candidates, steering, icl, seed=0)
    assert held is not None and (held.selection_scenarios, held.report_scenarios) == (10, 10)
    assert held.choices["LoRA"].choice == {"run_id": "a", "step": 10} and held.choices["LoRA"].candidates == 3
    assert held.choices["steering"].choice["layer"] == 5  # another family's 0.99 is not what it is chosen on
    assert held.choices["ICL"].candidates == 2
    assert held.base is not None and held.base[0] < 0.2
    for c in held.choices.values():
        assert c.scenarios == 10 and c.lo <= c.rate <= c.hi
    text = "\n".join(held_out_lines(held))
    assert "| LoRA | 3 | LoRA a step 10 |" in text and "| steering | 2 | steering real L5 x4 |" in text
    answer = "\n".join(_q4_answer(pd.DataFrame(), held))
    assert "held-out report half" in answer and "training is needed here" in answer
    assert "paired over the 10 report-half scenarios" in answer
    # the same comparison read on the held-out half flips when a baseline is as good as LoRA
    counts, candidates, steering, icl = study(np.random.default_rng(1), steer_rate=0.9)
    close = "\n".join(_q4_answer(pd.DataFrame(), held_out_choices(counts, candidates, steering, icl, seed=0)))
    assert "training is needed here" not in close


def test_without_baseline_tables_the_answer_says_it_reads_the_selection_replies() -> None:
    counts, candidates, _, _ = study(np.random.default_rng(0), steer_rate=0.4)
    held = held_out_choices(counts, candidates, None, None, seed=0)
    assert held is not None and set(held.choices) == {"LoRA"}
    comp = pd.DataFrame([
        {"setup": "LoRA a step 10", "family": "in_distribution", "behavior_rate": 0.9, "lo": 0.8, "hi": 0.95},
        {"setup": "ICL k=3", "family": "in_distribution", "behavior_rate": 0.2, "lo": 0.1, "hi": 0.3}])
    assert "optimistic" in "\n".join(_q4_answer(comp, held))
    assert "missing" in "\n".join(held_out_lines(None))


def test_q5_adds_the_held_out_in_distribution_change() -> None:
    counts, candidates, steering, icl = study(np.random.default_rng(0), steer_rate=0.4)
    held = held_out_choices(counts, candidates, steering, icl, seed=0)
    comp = pd.DataFrame([
        {"setup": s, "family": "in_distribution", "behavior_rate": r, "lo": r - 0.1, "hi": r + 0.1}
        for s, r in [("base model", 0.05), ("LoRA a step 10", 0.9)]])
    study_rows = pd.DataFrame([{"run_id": "a", "step": 10, "family": "in_distribution", "metric": "p_preferred",
                                "value": 0.9, "lo": 0.8, "hi": 0.95, "n": 20}])
    best = pd.Series({"run_id": "a", "step": 10})
    text = "\n".join(q5(study_rows, best, comp, study_rows.iloc[:0], held_out=held))
    assert "without the winner's curse" in text and "LoRA a step 10, chosen on the selection half" in text
    assert ": change 0." in text and "up." in text
