import pandas as pd

from phaseflip.report import _costs, stage_of


def test_stage_of_strips_the_grid_point() -> None:
    assert stage_of("train_lr1e-03_nall_k0_s0") == "train"
    assert stage_of("evaluate_control-irrelevant_lr1e-03_nall_k0_s0") == "evaluate"
    assert stage_of("evaluate_base") == "evaluate_base"
    assert stage_of("steering_vectors") == "steering_vectors"
    assert stage_of("steering") == "steering"


def test_costs_sum_jobs_per_stage_and_in_total() -> None:
    bench = pd.DataFrame({"job": ["base_model", "train_lr1e-03_nall_k0_s0", "train_lr3e-03_nall_k0_s0",
                                  "evaluate_base", "evaluate_lr1e-03_nall_k0_s0"],
                          "s": [30.0, 100.0, 200.0, 40.0, 250.0], "max_rss": [600, 2000, 2400, 1400, 1800]})
    lines = _costs(bench)
    assert "| train | 2 | 300.0 | 2400 |" in lines
    assert "| evaluate_base | 1 | 40.0 | 1400 |" in lines
    assert "| evaluate | 1 | 250.0 | 1800 |" in lines
    assert "| **total** | 5 | 620.0 | 2400 (max) |" in lines
    assert _costs(pd.DataFrame()) == []


def _q5_lines(behavior: dict) -> str:  # type: ignore[type-arg]
    from types import SimpleNamespace

    from phaseflip.report import _q5

    comp = pd.DataFrame([{"setup": s, "family": f, "behavior_rate": 0.5, "lo": 0.3, "hi": 0.7}
                         for s in ["base model", "LoRA r step 4"] for f in ["in_distribution", "inverted"]])
    study = pd.DataFrame(columns=["run_id", "step", "family", "metric", "value"])
    best = SimpleNamespace(run_id="r", step=4)
    return "\n".join(_q5(study=study, base=study, best_ckpt=best, comp=comp, params={"behavior": behavior}))


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
