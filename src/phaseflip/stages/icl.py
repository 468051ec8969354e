"""Stage icl: k real corrections as prior turns in context, scored like a checkpoint (`interventions.icl`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import IclConfig
from phaseflip.data import load_examples
from phaseflip.interventions.icl import icl_table, resolve_ks
from phaseflip.io import write_csv, write_json
from phaseflip.stages.inputs import base_rows, evaluator, load_model


def run(params: dict[str, Any], out: str, base: str, corrections: str, eval: str, retention: str,
        base_metrics: str) -> None:
    cfg = IclConfig.model_validate(params["icl"])
    model, tok = load_model(base, params, "icl")
    real = load_examples(corrections, "corrections")
    scoring = evaluator(params, tok, eval, retention, base)
    ks = resolve_ks(list(cfg.ks), len(real))
    started = time.time()
    rows, shots = icl_table(scoring, model, tok, real, ks, int(params["seed"]), base_rows(base_metrics))
    write_csv(Path(out) / "icl_metrics.csv", pd.DataFrame(rows))
    write_json(Path(out) / "icl_shots.json", shots)
    print(f"icl: k in {ks} in {time.time() - started:.0f}s")
