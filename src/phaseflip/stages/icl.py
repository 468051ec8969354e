"""Stage icl: k real corrections as prior turns in context, scored like a checkpoint (`interventions.icl`).

    python -m phaseflip.cli icl --params '{...}' --base results/base_model \\
        --corrections results/corrections/train.jsonl --eval results/corrections/eval.jsonl \\
        --retention results/corrections/retention.jsonl \\
        --base-metrics results/base_eval/metrics.csv --out results/icl
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import IclConfig
from phaseflip.data import load_examples
from phaseflip.interventions.icl import icl_table, resolve_ks
from phaseflip.io import write_csv, write_json
from phaseflip.measure.evaluator import SCENARIO_COLUMNS
from phaseflip.stages.inputs import base_rows, load_model, make_evaluator


def run(params: dict[str, Any], out: str, base: str, corrections: str, eval: str, retention: str,
        base_metrics: str) -> None:
    cfg = IclConfig.model_validate(params["icl"])
    model, tok = load_model(base, params, "icl")
    real = load_examples(corrections, "corrections")
    evaluator = make_evaluator(params, tok, eval, retention, base)
    ks = resolve_ks(list(cfg.ks), len(real))
    started = time.time()
    k0_rows = base_rows(base_metrics) if 0 in ks else []  # k=0 is the base model: the evaluate_base job's rows
    rows, shots = icl_table(evaluator, model, tok, real, ks, int(params["seed"]), k0_rows)
    write_csv(Path(out) / "icl_metrics.csv", pd.DataFrame(rows))
    # each k's per-scenario counts (inside the evaluator k is the step): the report's held-out selection
    per_scenario = [dict(r, shots=r["step"], step=0) for r in evaluator.scenario_rows
                    if r["step"] in ks and r["step"] > 0]
    write_csv(Path(out) / "icl_scenarios.csv", pd.DataFrame(per_scenario, columns=["shots", *SCENARIO_COLUMNS]))
    write_json(Path(out) / "icl_shots.json", shots)
    print(f"icl: k in {ks} in {time.time() - started:.0f}s")
