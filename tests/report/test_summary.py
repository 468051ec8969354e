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


def _q5_lines(behavior: dict) -> str:  # type: ignore[type-arg]
    from types import SimpleNamespace

    from phaseflip.report.answers import q5

    comp = pd.DataFrame([{"setup": s, "family": f, "behavior_rate": 0.5, "lo": 0.3, "hi": 0.7}
                         for s in ["base model", "LoRA r step 4"] for f in ["in_distribution", "inverted"]])
    study = pd.DataFrame(columns=["run_id", "step", "family", "metric", "value"])
    best = SimpleNamespace(run_id="r", step=4)
    return "\n".join(q5(study=study, base=study, best_ckpt=best, comp=comp,
                         family_notes=behavior.get("family_notes")))


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


def test_q6_leads_with_the_plain_verdict_for_the_study_and_each_generator() -> None:
    from phaseflip.config import ForecastBenchConfig, ForecastConfig
    from phaseflip.forecast.bench import bench_tables, run_bench
    from phaseflip.forecast.bench_model import SimModel
    from phaseflip.forecast.scores import score_table
    from phaseflip.report.summary import _q6

    cfg = ForecastConfig(forecast_bootstrap=10, bench=ForecastBenchConfig(n_bootstrap=10, control_share=0.0))
    rows = run_bench(SimModel(), cfg, n_runs=6, seed=0, processes=1, generators=["fitted"],
                     methods=["pooled_link", "linear", "climatology"])
    _, summary = bench_tables(rows, cfg, 16)
    study = rows.drop(columns=["generator"])
    runs = study.drop_duplicates("run_id")
    transitions = pd.DataFrame({"run_id": runs.run_id, "lr": runs.lr, "control": runs.control, "t50": runs.t50,
                                "flipped": runs.t50.notna()})
    lines = _q6(forecasts=study, quality=score_table(study), transitions=transitions, max_steps=16,
                bench_summary=summary, params={"forecast": {"primary": "pooled_link"}})
    assert lines[1].startswith("## Q6")
    lead = lines[3]
    assert lead.startswith("On this study (leave-one-configuration-out): `pooled_link` ")
    assert "On the `fitted` generator: `pooled_link` " in lead
    assert ("does **not** beat both" in lead) or ("from origin step" in lead)
    text = "\n".join(lines)
    assert "| fitted |" in text and "this study (leave-one-configuration-out)" in text
    assert "Outside [" in text or "fewer than 3 crossed runs" in text  # lr_scaling: no extrapolation


def test_lr_scaling_in_the_report_forecasts_only_between_studied_learning_rates() -> None:
    from phaseflip.report.summary import _lr_scaling

    t = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "lr": [1e-3, 1e-3, 4e-3, 4e-3], "control": False,
                      "t50": [12.0, 13.0, 4.0, 4.5]})
    (_, line) = _lr_scaling(t)
    assert "lr 0.002:" in line and "lr 0.0001" not in line and "lr 0.01:" not in line
    assert "Outside [0.001, 0.004] it makes no forecast" in line
