"""Stage train: one LoRA run of the grid, named by its run id (`interventions.train.train_run`).

    python -m phaseflip.cli train --params '{...}' --base results/base_model \\
        --corrections results/corrections/train.jsonl --dreams results/dreams/dreams.jsonl \\
        --retention results/corrections/retention.jsonl --run-id lr1e-03_nall_k0_s0 \\
        --out results/runs/lr1e-03_nall_k0_s0
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from phaseflip.config import TrainRecipe
from phaseflip.data import load_examples, load_retention
from phaseflip.interventions.train import greedy_replies, parse_run_id, train_run, training_examples
from phaseflip.io import read_json
from phaseflip.stages.inputs import load_model, read_dreams


def run(params: dict[str, Any], out: str, base: str, corrections: str, dreams: str, retention: str,
        run_id: str) -> None:
    cfg = TrainRecipe.of(params["train"])  # the recipe only: the run's point is its id
    spec = parse_run_id(run_id)
    # Every data file is read (and a bad one reported) before the model loads.
    real, dreamt = load_examples(corrections, "corrections"), read_dreams(dreams)
    unrelated = [r["text"] for r in load_retention(retention)]  # the irrelevant control's replies
    model, tok = load_model(base, params, "train")
    examples = training_examples(spec, real, dreamt, unrelated,
                                 own_replies=partial(greedy_replies, model, tok, max_length=cfg.max_length))
    base_sha = read_json(Path(base) / "manifest.json")["files"]["model.safetensors"]
    summary = train_run(model, tok, examples, spec, cfg, out, base_fingerprint=base_sha)
    print(f"train {spec.run_id}: {summary['status']} after step {summary['last_good_step']} "
          f"({summary['seconds']}s, {summary['reply_tokens_per_s']} reply tokens/s)")
