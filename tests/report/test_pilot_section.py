import math

import pandas as pd

from phaseflip.report.pilot_section import pilot_lines


def test_pilot_section_sets_each_runs_measured_t50_beside_its_prediction() -> None:
    grid = {"lrs": [4.5e-3, 6.8e-3], "chosen_by": "pilot", "note": "extrapolated", "beta": 0.8,
            "beta_source": "measured", "checkpoint_steps": [3, 6, 9, 12, 16],
            "predicted_t50": {"4.5e-03": 9.6, "6.8e-03": 6.4},
            "probes": [{"lr": 4e-3, "steps": [0, 1, 2], "k": [0, 6, 20], "n": [24, 24, 24], "t50": 1.4}]}
    transitions = pd.DataFrame([
        {"run_id": "lr4.5e-03_nall_k0_s0", "lr": 4.5e-3, "control": False, "t50": 10.1, "t50_text": "10.1 [9, 11]"},
        {"run_id": "lr6.8e-03_nall_k0_s0", "lr": 6.8e-3, "control": False, "t50": 2.0, "t50_text": "2.0 [1, 3]"},
        {"run_id": "control-own-replies_lr4.5e-03_nall_k0_s0", "lr": 4.5e-3, "control": True, "t50": math.nan,
         "t50_text": "t50 > 16"},
    ])
    costs = pd.DataFrame([{"job": "pilot", "s": 100.0}, {"job": "train_x", "s": 900.0}])
    text = "\n".join(pilot_lines(grid, transitions, costs, max_steps=16))
    assert "| lr4.5e-03_nall_k0_s0 | 9.6 | 10.1 [9, 11] | yes |" in text
    assert "| lr6.8e-03_nall_k0_s0 | 6.4 | 2.0 [1, 3] | no |" in text  # 2.0 is outside [4, 12]
    assert "control" not in text.split("Predicted vs measured")[1]  # the control is not a prediction's test
    assert "1 of 2 real runs crossed inside the window" in text
    assert "Pilot cost: 100 s of the study's 1000 job-seconds (10%)" in text
    assert "[3, 6, 9, 12, 16]" in text and "| 0.004 | 2 | 0.00 0.25 0.83 | 1.4 |" in text
    assert pilot_lines(None, transitions, costs, max_steps=16) == []
