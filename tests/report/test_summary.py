from pathlib import Path

import pandas as pd

from phaseflip.io import write_csv
from phaseflip.report.summary import _costs, train_log_table


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


def test_train_log_table_is_one_tidy_file_with_a_run_column(tmp_path: Path) -> None:
    """The `dvc plots` source for loss / grad_norm: one line per run needs the run_id on every row."""
    paths = []
    for run_id, loss in [("lr3e-03_nall_k0_s0", [2.0, 1.0]), ("lr1e-03_nall_k0_s0", [3.0, 2.5])]:
        path = tmp_path / run_id / "train_log.csv"
        write_csv(path, pd.DataFrame({"step": [2, 1], "loss": loss[::-1], "grad_norm": [0.5, 0.7], "lr": 1e-3}))
        paths.append(str(path))
    table = train_log_table(paths)
    assert list(table.columns) == ["run_id", "step", "loss", "grad_norm", "lr"]
    assert table.run_id.tolist() == ["lr1e-03_nall_k0_s0"] * 2 + ["lr3e-03_nall_k0_s0"] * 2  # sorted
    assert table.step.tolist() == [1, 2, 1, 2]
    assert table.loss.tolist() == [3.0, 2.5, 2.0, 1.0]
    assert train_log_table(paths[::-1]).equals(table)  # independent of the order the logs come in
    assert list(train_log_table([]).columns) == ["run_id", "step", "loss", "grad_norm", "lr"]


def test_header_names_the_model_and_the_fast_paths_it_used() -> None:
    """The manifest's architecture and fast paths, the steering screen's own verdict winning for its path."""
    import pandas as pd

    from phaseflip.report.summary import model_summary

    sliding = "on gemma2 (DynamicSlidingWindowLayer cache layers, not croppable)"
    manifest = {"architecture": "Gemma2ForCausalLM", "model_type": "gemma2", "n_parameters": 3_220_096,
                "dtype": "float32", "fast_paths": {"upper_blocks": "fast", "cache_crop": sliding,
                                                   "decode_cache": sliding, "attention": "fast"}}
    screen = pd.DataFrame({"screen_path": ["on gemma2 (blocks above layer 1 alone give margin 0.1, ...)"]})
    line = model_summary(manifest, screen)
    assert line.startswith("Architecture `Gemma2ForCausalLM` (model_type `gemma2`), 3,220,096 parameters.")
    assert "Fast paths used: attention;" in line
    assert f"cache_crop, decode_cache {sliding}" in line and "upper_blocks on gemma2 (blocks above layer 1" in line
    assert model_summary(None, None) == ""
