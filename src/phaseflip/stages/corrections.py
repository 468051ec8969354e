"""Stage corrections: validate the behavior's data, fill missing `rejected`, make missing reference pairs.

    python -m phaseflip.cli corrections --params '{...}' --base results/base_model --out results/corrections
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from phaseflip.config import BehaviorConfig
from phaseflip.prepare.corrections import prepare
from phaseflip.stages.inputs import judge_for, load_model


def run(params: dict[str, Any], out: str, base: str) -> None:
    behavior = BehaviorConfig.model_validate(params["behavior"])
    report = prepare(behavior, Path(out), int(params["seed"]), cache(lambda: load_model(base, params, "corrections")),
                     lambda: judge_for(params, base))
    refs = report["references"]
    print(f"corrections: {report['corrections']} ({report['rejected_filled']} rejected filled), eval {report['eval']} "
          f"({refs['with_pair']} with a reference pair, {refs['generated_pairs']} generated), "
          f"retention {report['retention']}")
