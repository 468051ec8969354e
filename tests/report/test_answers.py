import pandas as pd

from phaseflip.report.answers import q1, q2, q3, q5, t50_difference
from phaseflip.report.summary import effective_count


def transitions() -> pd.DataFrame:
    rows = [  # two seeds at one point, a dreams run, a censored run, the control
        ("lr3e-03_nall_k0_s0", 3e-3, "all", 0, 0, 7.0, 6.0, 8.0, True, "7.0 [6.0, 8.0]"),
        ("lr3e-03_nall_k0_s1", 3e-3, "all", 0, 1, 9.0, 8.0, 10.0, True, "9.0 [8.0, 10.0]"),
        ("lr3e-03_n4_k2_s0", 3e-3, "4", 2, 0, 12.0, 11.0, 13.5, True, "12.0 [11.0, 13.5]"),
        ("lr3e-03_n4_k0_s0", 3e-3, "4", 0, 0, None, None, None, False, "t50 > 16"),
    ]
    table = pd.DataFrame(rows, columns=["run_id", "lr", "n_real", "dream_k", "seed", "t50", "t50_lo", "t50_hi",
                                        "flipped", "t50_text"])
    table["control"] = False
    control = table.iloc[[3]].assign(run_id="control-irrelevant_lr1e-03_nall_k0_s0", control=True, lr=1e-3)
    table = pd.concat([table, control], ignore_index=True)
    for col in ("confirmed_flip_step", "grad_norm_peak_step", "lag_grad_norm_peak", "dissimilarity_peak_step",
                "lag_dissimilarity_peak", "change_point_step", "lag_change_point"):
        table[col] = None
    return table


def test_q1_gives_t50_with_interval_censoring_and_seed_spread() -> None:
    text = "\n".join(q1(pd.DataFrame(columns=["run_id", "metric", "family", "step"]), transitions(), None,
                        max_steps=16, threshold=0.5))
    assert "3 of 4 real runs crossed 0.5 within 16 steps" in text
    assert "seed 0: 7.0 [6.0, 8.0]; seed 1: 9.0 [8.0, 10.0]" in text
    assert "t50 > 16" in text and "negative control" in text
    assert "SD 1.41 steps" in text and "seeds per arm" in text


def test_q3_differences_carry_intervals_and_a_power_statement() -> None:
    t = transitions()
    d = t50_difference(t.iloc[2], t.iloc[0])
    assert d is not None and d.value == 5.0 and d.lo > 0  # dreams later, resolved
    assert t50_difference(t.iloc[2], t.iloc[3]) is None  # the censored run cannot be compared
    text = "\n".join(q3(t, pd.DataFrame(), {"counts": {"generated": 24}}, {"corrections": 12}, effective_count))
    assert "+5.0 steps [95%" in text and "dreams later" in text and "not comparable" in text
    assert "seeds per arm" in text


def test_q5_states_each_family_change_with_its_interval() -> None:
    comp = pd.DataFrame([
        {"setup": "base model", "family": "french", "behavior_rate": 0.1, "lo": 0.02, "hi": 0.25},
        {"setup": "LoRA r step 16", "family": "french", "behavior_rate": 0.7, "lo": 0.55, "hi": 0.82},
    ])
    best = pd.Series({"run_id": "r", "step": 16})
    study = pd.DataFrame([{"run_id": "r", "step": 16, "metric": "p_preferred", "family": "french", "n": 10}])
    text = "\n".join(q5(study, best, comp, pd.DataFrame(columns=["metric", "family", "value"]),
                        family_notes={"french": "a note from the behavior's YAML"}))
    assert "| french | 10 | 0.10 [0.02, 0.25] | 0.70 [0.55, 0.82] | 0.60 [" in text
    assert "| up | yes" in text and "a note from the behavior's YAML" in text


def test_q2_reads_sharpness_only_for_runs_that_crossed() -> None:
    table = transitions()
    table["sharpness_behavior_rate"] = [4.0, 2.0, 3.0, 1.2, 1.2]
    table["sharpness_p_preferred"] = [1.5, 1.9, 2.0, 462.48, 462.48]  # a flat run's noise over a tiny net change
    table["sharpness_margin"] = [1.4, 1.8, 2.1, 213.7, 213.7]
    rows = {line.split(" | ")[0][2:]: line for line in q2(table) if line.startswith("| lr") or "control" in line}
    assert "mirage" in rows["lr3e-03_nall_k0_s0"] and "a real change" in rows["lr3e-03_nall_k0_s1"]
    assert "462" not in rows["lr3e-03_n4_k0_s0"] and "not crossed" in rows["lr3e-03_n4_k0_s0"]
