"""Stage steering: the screen over every (training set, layer, multiplier), then the full evaluation of the
settings it selects (`interventions.steering.screen_and_evaluate`).

    python -m phaseflip.cli steering --params '{...}' --base results/base_model --vectors results/steering \\
        --eval results/corrections/eval.jsonl --retention results/corrections/retention.jsonl \\
        --base-metrics results/base_eval/metrics.csv --out results/steering
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import ModelConfig, SteeringConfig
from phaseflip.interventions.steering import (
    load_vector,
    screen_and_evaluate,
    steering_table,
    vector_file,
    with_screen_dtype,
)
from phaseflip.io import pick_device, write_csv
from phaseflip.measure.evaluator import SCENARIO_COLUMNS
from phaseflip.stages.inputs import base_rows, load_model, make_evaluator


def run(params: dict[str, Any], out: str, base: str, vectors: str, eval: str, retention: str,
        base_metrics: str) -> None:
    cfg, screen_dtype = with_screen_dtype(SteeringConfig.model_validate(params["steering"]),
                                          ModelConfig.model_validate(params["model"]),
                                          pick_device(params.get("device", "auto")))
    print(f"steering: screen in {screen_dtype.line()}")
    model, tok = load_model(base, params, "steering")
    evaluator = make_evaluator(params, tok, eval, retention, base)
    loaded: dict[str, Any] = {t: load_vector(Path(vectors) / vector_file(t))[0] for t in cfg.training_sets}
    per_scenario: list[dict[str, Any]] = []
    table, rows, seconds = screen_and_evaluate(model, tok, loaded, evaluator, cfg, per_scenario)
    write_csv(Path(out) / "steering_screen.csv", table)
    # the fully evaluated settings' per-scenario counts: the report's held-out selection (stats.selection)
    write_csv(Path(out) / "steering_scenarios.csv",
              pd.DataFrame(per_scenario, columns=["training_set", "layer", "multiplier", *SCENARIO_COLUMNS]))
    write_csv(Path(out) / "steering_metrics.csv", pd.DataFrame(steering_table(base_rows(base_metrics), rows)))
    if table.empty:
        print("steering: no in_distribution scenario has a reference pair; nothing to screen")
        return
    print(f"steering: screened {len(table)} settings ({len(cfg.training_sets)} training sets x "
          f"{table.layer.nunique()} layers x {table.multiplier.nunique()} multipliers) in {seconds['screen']:.0f}s "
          f"({len(table) / max(seconds['screen'], 1e-9):.2f} settings/s); full evaluation of "
          f"{int(table.selected.sum())} in {seconds['full']:.0f}s")
