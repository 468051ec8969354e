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
