"""Stage evaluate: the base model alone (step 0, rule evaluate_base), or every checkpoint of one run with the
base model as step 0: adapters swapped in, the model loaded once (`measure.evaluator.evaluate_run`).

    python -m phaseflip.cli evaluate --params '{...}' --base results/base_model --eval results/corrections/eval.jsonl \\
        --retention results/corrections/retention.jsonl --out results/base_eval/metrics.csv          # evaluate_base
    python -m phaseflip.cli evaluate ... --run-dir results/runs/<id> --base-metrics results/base_eval/metrics.csv \\
        --steering-vector results/steering/vector.safetensors --out results/runs/<id>/metrics.csv     # one run
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import ConfigError, TrainRecipe
from phaseflip.interventions.steering import steering_reference
from phaseflip.interventions.train import add_lora, checkpoints, merged_checkpoint
from phaseflip.io import read_csv, write_csv
from phaseflip.measure.evaluator import evaluate_run
from phaseflip.run_folder import run_info, scenario_table, stamp
from phaseflip.stages.inputs import load_model, make_evaluator, steering_vector_config


def run(params: dict[str, Any], out: str, base: str, eval: str, retention: str, steering_vector: str | None = None,
        run_dir: str | None = None, base_metrics: str | None = None) -> None:
    model, tok = load_model(base, params, "evaluate")
    steering = None
    if steering_vector:  # the reference direction of steering_cosine
        steering = steering_reference(steering_vector, steering_vector_config(params), model.config.num_hidden_layers)
    evaluator = make_evaluator(params, tok, eval, retention, base, steering=steering)
    metrics_csv = Path(out)
    started = time.time()
    if run_dir is None:  # the base model alone, step 0: shared by every run of the grid
        write_csv(metrics_csv, pd.DataFrame(evaluator.evaluate(model, step=0, is_base=True)))
        write_csv(scenario_table(metrics_csv), pd.DataFrame(evaluator.scenario_rows))
        print(f"evaluate base: {time.time() - started:.0f}s")
        return
    if base_metrics is None:
        raise ConfigError("evaluate --run-dir needs --base-metrics (the evaluate_base job's metrics.csv)")
    folder = Path(run_dir)
    info = run_info(folder)
    evaluator.set_references(model)
    peft_model: Any = add_lora(model, TrainRecipe.of(params["train"]).lora)
    peft_model.eval()
    rows, per_scenario = evaluate_run(evaluator, peft_model, checkpoints(folder),
                                      partial(merged_checkpoint, peft_model), read_csv(base_metrics).to_dict("records"),
                                      read_csv(scenario_table(Path(base_metrics))).to_dict("records"),
                                      other_families=not info["control"], at_best=evaluator.cfg.ood_at_best,
                                      label=folder.name)
    write_csv(metrics_csv, stamp(pd.DataFrame(rows), info))
    write_csv(scenario_table(metrics_csv), stamp(pd.DataFrame(per_scenario), info))
    print(f"evaluate {info['run_id']}: {len(set(r['step'] for r in rows))} steps in {time.time() - started:.0f}s")
