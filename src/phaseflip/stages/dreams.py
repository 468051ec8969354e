"""Stage dreams: K variations of each real correction (`prepare.dreams`), with their report.

    python -m phaseflip.cli dreams --params '{...}' --corrections results/corrections/train.jsonl \\
        --eval results/corrections/eval.jsonl [--base results/base_model] --out results/dreams
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phaseflip.config import BehaviorConfig, ConfigError, DreamsConfig
from phaseflip.data import load_examples
from phaseflip.io import write_json, write_jsonl
from phaseflip.prepare.dreams import ModelWriter, generate_dreams, uses_model_writer, vocab_for
from phaseflip.stages.inputs import judge_for, load_model


def run(params: dict[str, Any], out: str, corrections: str, eval: str, base: str | None = None) -> None:
    behavior = BehaviorConfig.model_validate(params["behavior"])
    cfg = DreamsConfig.model_validate(params["dreams"])
    real, evals = load_examples(corrections, "corrections"), load_examples(eval, "eval")
    vocab = vocab_for(cfg, behavior.data.dream_vocab)
    writer = None
    if uses_model_writer(cfg):
        if not base:
            raise ConfigError("dreams.generators includes 'model': pass --base (the base model folder)")
        writer = ModelWriter(*load_model(base, params, "dreams"))
    dreams, report = generate_dreams(real, evals, vocab, judge_for(params, base), cfg, int(params["seed"]),
                                     writer=writer, description=behavior.description)
    write_jsonl(Path(out) / "dreams.jsonl", [d.to_json() for d in dreams])
    write_json(Path(out) / "dream_report.json", report)
    dropped = ", ".join(f"{k[8:]} {v}" for k, v in report["counts"].items() if k.startswith("dropped_")) or "none"
    print(f"dreams: kept {len(dreams)} of {report['counts'].get('generated', 0)} generated (dropped: {dropped})")
