"""Stage base_model: materialise the model under study (`model.base_model.materialise`).

    python -m phaseflip.cli base_model --params '{"model": {...}, "seed": 0}' --out results/base_model
"""

from __future__ import annotations

from typing import Any

from phaseflip.config import ModelConfig
from phaseflip.model.base_model import materialise


def run(params: dict[str, Any], out: str) -> None:
    manifest = materialise(ModelConfig.model_validate(params["model"]), out, seed=int(params["seed"]),
                           device=params.get("device", "auto"))
    print(f"base_model: {manifest['model']} ({manifest['n_parameters']:,} parameters) -> {out}; "
          f"compute dtype {manifest['dtype']} ({manifest['dtype_reason']})")
