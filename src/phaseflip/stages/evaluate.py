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
from phaseflip.interventions.pilot import read_grid
from phaseflip.interventions.steering import steering_reference
from phaseflip.interventions.train import add_lora, checkpoints, merged_checkpoint
from phaseflip.io import read_csv, write_csv
from phaseflip.measure.evaluator import evaluate_run
from phaseflip.run_folder import run_info, scenario_table, stamp
from phaseflip.stages.inputs import load_model, make_evaluator, steering_vector_config


def evaluated_checkpoints(found: list[tuple[int, Path]], recipe: TrainRecipe,
                          grid: str | None) -> list[tuple[int, Path]]:
    """The checkpoints to evaluate: every saved one, or under `checkpoint_steps: auto` (adapters saved at every
    step) those the pilot placed (its grid.json), plus the run's last where it stopped early (diverged)."""
    if recipe.checkpoint_steps != "auto":
        return found
    if grid is None:
        raise ConfigError("train.checkpoint_steps is auto: evaluate needs --grid (the pilot's grid.json)")
    steps = read_grid(grid)["checkpoint_steps"]
    if not steps:
        raise ConfigError(f"{grid}: checkpoint_steps is null, but train.checkpoint_steps is auto (rerun the pilot)")
    picked = [(s, p) for s, p in found if s in steps]
    if found and found[-1] not in picked:
        picked.append(found[-1])
    return picked


def run(params: dict[str, Any], out: str, base: str, eval: str, retention: str, steering_vector: str | None = None,
        run_dir: str | None = None, base_metrics: str | None = None, grid: str | None = None) -> None:
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
    recipe = TrainRecipe.of(params["train"])
    peft_model: Any = add_lora(model, recipe.lora)
    peft_model.eval()
    found = evaluated_checkpoints(checkpoints(folder), recipe, grid)
    rows, per_scenario = evaluate_run(evaluator, peft_model, found,
                                      partial(merged_checkpoint, peft_model), read_csv(base_metrics).to_dict("records"),
                                      read_csv(scenario_table(Path(base_metrics))).to_dict("records"),
                                      other_families=not info["control"], at_best=evaluator.cfg.ood_at_best,
                                      label=folder.name)
    write_csv(metrics_csv, stamp(pd.DataFrame(rows), info))
    write_csv(scenario_table(metrics_csv), stamp(pd.DataFrame(per_scenario), info))
    print(f"evaluate {info['run_id']}: {len(set(r['step'] for r in rows))} steps in {time.time() - started:.0f}s")
