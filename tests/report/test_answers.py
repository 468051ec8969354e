import numpy as np
import pandas as pd

from phaseflip.report.answers import q1, q2, q3, q5
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


def _counts(t50: float, rng: np.random.Generator, effects: np.ndarray) -> pd.DataFrame:
    rows = [(s, c, int(rng.binomial(8, 1 / (1 + np.exp(-(0.9 * (s - t50) + effects[c]))))), 8)
            for s in (0, 2, 4, 6, 10, 16) for c in range(len(effects))]
    return pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n"])


def test_q3_reads_a_difference_only_with_the_seed_spread_behind_it() -> None:
    t = transitions()
    text = "\n".join(q3(t, pd.DataFrame(), {"counts": {"generated": 24}}, {"corrections": 12}, effective_count))
    # seeds 7 and 9 at one grid point: SD 1.41 on 1 df, t = 12.7, so +5 steps is not resolved
    assert "| +5.0 steps | n/a | [-20.4, +30.4] | no difference resolved |" in text
    assert "not comparable" in text and "seeds per arm" in text and "dreams later" not in text
    # paired over the same scenarios (counts given): the paired interval is printed beside it
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 1, 20)
    counts = {"lr3e-03_n4_k2_s0": _counts(12.0, rng, effects), "lr3e-03_nall_k0_s0": _counts(7.0, rng, effects)}
    paired = "\n".join(q3(t, pd.DataFrame(), {}, {"corrections": 12}, effective_count, counts=counts))
    row = next(line for line in paired.splitlines() if "equal effective count" in line)
    lo, hi = (float(v) for v in row.split(" | ")[6].strip("[]").split(","))
    assert 0 < lo < 5 < hi < 10  # evaluation noise alone resolves it; the arms interval does not
    # no replicated grid point: no reading at all
    single = t[t.seed == 0]
    none = "\n".join(q3(single, pd.DataFrame(), {}, {"corrections": 12}, effective_count))
    assert "not resolved: seed spread not measured" in none and "no difference resolved" not in none


def test_q1_plans_power_for_the_configured_effect() -> None:
    text = "\n".join(q1(pd.DataFrame(columns=["run_id", "metric", "family", "step"]), transitions(), None,
                        max_steps=16, threshold=0.5,
                        params={"forecast": {"inference": {"smallest_t50_difference": 4}}}))
    assert "smallest effect of 4 steps" in text and "(df 1)" in text and "this grid has 1-2 seed(s)" in text


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
    assert "among each run's last and best checkpoint" in text  # no params: the code default
    fixed = "\n".join(q5(study, best, comp, pd.DataFrame(columns=["metric", "family", "value"]),
                         params={"eval": {"ood_at_best": False}}))
    assert "among each run's last checkpoint, fixed in advance" in fixed


def test_q2_reads_the_mirage_test_not_the_sharpness_ratio() -> None:
    table = transitions()
    for m in ("behavior_rate", "p_preferred", "margin"):
        table[f"sharpness_{m}"] = 2.0
    mirage = pd.DataFrame([
        {"run_id": "lr3e-03_nall_k0_s0", "control": False, "metric": "p_preferred", "statistic": 9.0,
         "p_value": 0.001, "scenarios": 30, "verdict": "step adds to the continuous metric: not a mirage",
         "reason": ""},
        {"run_id": "lr3e-03_n4_k0_s0", "control": False, "metric": "p_preferred", "statistic": None, "p_value": None,
         "scenarios": 30, "verdict": "not testable", "reason": "every reply the same: no variation to explain"},
        {"run_id": "pooled", "control": False, "metric": "p_preferred", "statistic": 0.4, "p_value": 0.61,
         "scenarios": 30, "verdict": "consistent with a mirage", "reason": ""},
    ])
    text = "\n".join(q2(table, mirage=mirage))
    assert "| lr3e-03_nall_k0_s0 | score 9.00, 30 scenarios | 0.001 | step adds" in text
    assert "not testable: every reply the same" in text
    assert "**Answer (pooled over the non-control runs, p = 0.61).** No evidence that step adds" in text
    assert "No mirage test" in "\n".join(q2(table, mirage=None))


def _q5_lines(behavior: dict) -> str:  # type: ignore[type-arg]
    from types import SimpleNamespace

    from phaseflip.report.answers import q5

    comp = pd.DataFrame([{"setup": s, "family": f, "behavior_rate": 0.5, "lo": 0.3, "hi": 0.7}
                         for s in ["base model", "LoRA r step 4"] for f in ["in_distribution", "inverted"]])
    study = pd.DataFrame(columns=["run_id", "step", "family", "metric", "value"])
    best = SimpleNamespace(run_id="r", step=4)
    return "\n".join(q5(study=study, base=study, best_ckpt=best, comp=comp,
                         family_notes=behavior.get("family_notes")))


def test_q4_cites_the_steering_screen_best_setting_with_its_interval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.report.answers import _screen_lines
    from phaseflip.report.figures import steering_figure

    rows = []
    for layer in (0, 1):
        for mult, pp, kl in ((1.0, 0.55 + layer / 10, 0.1), (8.0, 0.9, 2.0)):  # x8: best p but over the bound
            key = {"step": 0, "training_set": "real", "layer": layer, "multiplier": mult, "max_retention_kl": 0.5}
            eligible = kl <= 0.5
            rows += [{**key, "family": "in_distribution", "metric": "screen_p_preferred", "value": pp,
                      "lo": pp - 0.05, "hi": pp + 0.05},
                     {**key, "family": "in_distribution", "metric": "screen_forced_choice", "value": 0.6, "lo": 0.3,
                      "hi": 0.8},
                     {**key, "family": "all", "metric": "screen_retention_kl", "value": kl, "lo": None, "hi": None},
                     {**key, "family": "in_distribution", "metric": "screen_rank",
                      "value": (2 - layer) if eligible else None, "lo": None, "hi": None}]
    rows.append({"step": 0, "training_set": "real", "layer": 1, "multiplier": 1.0, "family": "in_distribution",
                 "metric": "behavior_rate", "value": 0.2, "lo": 0.1, "hi": 0.4})
    steer = pd.DataFrame(rows)
    lines = "\n".join(_screen_lines(steer))
    assert "1 training sets x 2 layers x 2 multipliers [1.0, 8.0] = 4 settings, each" in lines
    assert "bracketing search" not in lines  # the whole grid was scored
    assert "retention_kl <= 0.50" in lines
    assert "- real: layer 1 x1: p_preferred 0.65 [0.60, 0.70]" in lines and "(2 of 4 settings under the bound)" in lines
    steering_figure(steer, tmp_path / "steering.png")
    assert (tmp_path / "steering.png").stat().st_size > 1000
    # A searched screen (layer 0's x8 not scored): the report says how many of the grid it scored.
    searched = steer[~((steer.layer == 0) & (steer.multiplier == 8.0))]
    lines = "\n".join(_screen_lines(searched))
    assert "= 4 settings; the bracketing search scored 3 of them, every layer" in lines
    steering_figure(searched, tmp_path / "searched.png")  # an unscored cell is drawn grey, not an error
    assert (tmp_path / "searched.png").stat().st_size > 1000


def test_q4_answer_tests_the_difference_not_interval_overlap() -> None:
    from phaseflip.report.answers import _q4_answer

    def comp(icl: tuple[float, float, float]) -> pd.DataFrame:
        return pd.DataFrame([
            {"setup": "base model", "family": "in_distribution", "behavior_rate": 0.0, "lo": 0.0, "hi": 0.1},
            {"setup": "LoRA lr3e-03 step 16", "family": "in_distribution", "behavior_rate": 0.80, "lo": 0.62,
             "hi": 0.91},
            {"setup": "ICL k=3", "family": "in_distribution", "behavior_rate": icl[0], "lo": icl[1], "hi": icl[2]},
        ])

    # the two intervals overlap (0.62 < 0.64), yet the difference 0.30 is resolved above 0 by MOVER
    overlapping = "\n".join(_q4_answer(comp((0.50, 0.36, 0.64))))
    assert "vs ICL k=3: 0.30 [" in overlapping and "training is needed here" in overlapping
    close = "\n".join(_q4_answer(comp((0.71, 0.55, 0.83))))
    assert "not resolved" in close and "training is needed here" not in close
    above = "\n".join(_q4_answer(comp((0.99, 0.95, 1.0))))
    assert "above LoRA's best" in above


def test_q6_leads_with_the_plain_verdict_for_the_study_and_each_generator() -> None:
    from phaseflip.config import ForecastBenchConfig, ForecastConfig
    from phaseflip.forecast.bench import bench_tables, run_bench
    from phaseflip.forecast.bench_model import SimModel
    from phaseflip.forecast.scores import score_table
    from phaseflip.report.answers import q6

    cfg = ForecastConfig(forecast_bootstrap=10, bench=ForecastBenchConfig(n_bootstrap=10, control_share=0.0))
    rows = run_bench(SimModel(), cfg, n_runs=6, seed=0, processes=1, generators=["fitted"],
                     methods=["pooled_link", "linear", "climatology"])
    _, summary = bench_tables(rows, cfg, 16)
    study = rows.drop(columns=["generator"])
    runs = study.drop_duplicates("run_id")
    transitions = pd.DataFrame({"run_id": runs.run_id, "lr": runs.lr, "control": runs.control, "t50": runs.t50,
                                "flipped": runs.t50.notna()})
    lines = q6(forecasts=study, quality=score_table(study), transitions=transitions, max_steps=16,
                bench_summary=summary,
                params={"forecast": {"primary": "pooled_link", "recalibration": {"method": "pooled_link"}}})
    assert lines[1].startswith("## Q6")
    lead = lines[3]
    assert lead.startswith("On this study (leave-one-configuration-out): `pooled_link` ")
    assert "On this study (leave-one-configuration-out): `pooled_link_recalibrated` " in lead
    assert "On the `fitted` generator: `pooled_link` " in lead
    assert "On the `fitted` generator: `pooled_link_recalibrated` " in lead
    assert ("does **not** beat both" in lead) or ("from origin step" in lead)
    text = "\n".join(lines)
    assert "| fitted · pooled_link |" in text and "| fitted · pooled_link_recalibrated |" in text
    assert "this study (leave-one-configuration-out) · pooled_link_recalibrated" in text
    assert "Beside it, `pooled_link_recalibrated`" in text
    assert "Outside [" in text or "fewer than 3 crossed runs" in text  # lr_scaling: no extrapolation


def test_lr_scaling_in_the_report_forecasts_only_between_studied_learning_rates() -> None:
    from phaseflip.report.answers import _lr_scaling

    t = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "lr": [1e-3, 1e-3, 4e-3, 4e-3], "control": False,
                      "t50": [12.0, 13.0, 4.0, 4.5]})
    (_, line) = _lr_scaling(t)
    assert "lr 0.002:" in line and "lr 0.0001" not in line and "lr 0.01:" not in line
    assert "Outside [0.001, 0.004] it makes no forecast" in line


def test_q5_family_notes_come_from_the_behavior_yaml() -> None:
    """Issue 16, failure 6: no behavior-specific sentence in code; each family's note is the YAML's."""
    from phaseflip.config import load_study_config

    formal = load_study_config({"behavior": "formal"}).behavior.model_dump()
    text = _q5_lines(formal)
    assert formal["family_notes"]["inverted"] in text
    assert "alternatives" not in text
    assert "(`inverted`" not in _q5_lines({"name": "plain"})  # no note configured: none printed
    listening = load_study_config({}).behavior.model_dump()
    assert "over-applies 'no alternatives'" in _q5_lines(listening)
