"""Stage steering_vectors: one contrastive vector per training set (always the real one: steering_cosine's
reference), every layer.

    python -m phaseflip.cli steering_vectors --params '{...}' --base results/base_model \\
        --corrections results/corrections/train.jsonl --dreams results/dreams/dreams.jsonl --out results/steering
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from phaseflip.data import load_examples
from phaseflip.interventions.steering import save_vector, train_vector, vector_file, vector_sets
from phaseflip.stages.inputs import load_model, read_dreams, steering_vector_config


def run(params: dict[str, Any], out: str, base: str, corrections: str, dreams: str) -> None:
    cfg = steering_vector_config(params)
    real = load_examples(corrections, "corrections")
    model, tok = load_model(base, params, "steering_vectors")
    started = time.time()
    for training_set in vector_sets(cfg):
        examples = real + read_dreams(dreams) if training_set == "real_and_dreams" else list(real)
        vector = train_vector(model, tok, examples, cfg)
        save_vector(vector, Path(out) / vector_file(training_set),
                    {"training_set": training_set, "pair_ids": [e.id for e in examples if e.preferred and e.rejected],
                     "read_token_index": cfg.read_token_index, "layers": sorted(vector.layer_activations)})
    print(f"steering_vectors: {vector_sets(cfg)} in {time.time() - started:.0f}s")
