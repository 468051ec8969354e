"""What several stages read the same way: the base model, the judge, the eval set, dreams, the base rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phaseflip.config import BehaviorConfig, EvalConfig, SteeringVectorConfig
from phaseflip.data import Example, load_examples, load_retention, subset_per_family
from phaseflip.io import DataError, pick_device, read_csv
from phaseflip.measure.evaluator import Evaluator, Row, SteeringReference
from phaseflip.measure.judge import Judge, make_judge


def load_model(base: str, params: dict[str, Any], stage: str) -> tuple[Any, Any]:
    """The base model and tokenizer; the stage's log gets one line naming the fast paths that fall back."""
    from phaseflip.model import base_model
    from phaseflip.model.architecture import announce_all

    trust = bool(params.get("model", {}).get("trust_remote_code", False))
    model, tok = base_model.load(base, pick_device(params.get("device", "auto")), trust_remote_code=trust)
    announce_all(model, stage)
    return model, tok


def judge_for(params: dict[str, Any], base: str | None) -> Judge:
    """The behavior's judge: rubric, or a model judge (by default the study's own base model)."""
    return make_judge(BehaviorConfig.model_validate(params["behavior"]), model_dir=base)


def steering_vector_config(params: dict[str, Any]) -> SteeringVectorConfig:
    """The vector-defining steering fields: what Snakemake passes (`steering.vector`), or picked from a
    whole `steering` section when the stage is called by hand."""
    section = params["steering"]
    return SteeringVectorConfig.model_validate({k: section[k] for k in SteeringVectorConfig.model_fields
                                                if k in section})


def eval_set(params: dict[str, Any], eval_path: str,
             retention_path: str) -> tuple[list[Example], list[str], EvalConfig]:
    """The eval scenarios (capped per family), the retention prompts (capped) and the eval config."""
    cfg = EvalConfig.model_validate(params["eval"])
    scenarios = subset_per_family(load_examples(eval_path, "eval"), cfg.max_scenarios_per_family)
    retention = [r["text"] for r in load_retention(retention_path)][: cfg.max_retention_prompts]
    return scenarios, retention, cfg


def make_evaluator(params: dict[str, Any], tok: Any, eval_path: str, retention_path: str, base: str | None,
                   steering: SteeringReference | None = None) -> Evaluator:
    """The one evaluator of a stage (checkpoints, steering settings, ICL k alike): the eval set, the
    behavior's judge, and optionally the steering_cosine reference."""
    scenarios, retention, cfg = eval_set(params, eval_path, retention_path)
    return Evaluator(tok, scenarios, retention, judge_for(params, base), cfg, seed=int(params["seed"]),
                     steering=steering)


def read_dreams(path: str) -> list[Example]:
    """The dreams file; empty (K=0) is allowed, missing is an error naming it."""
    if not Path(path).is_file():
        raise DataError(f"{path}: dreams file not found (written by rule dreams; run it first)")
    return load_examples(path, "corrections") if Path(path).stat().st_size else []


def base_rows(base_metrics: str) -> list[Row]:
    """The base model's metrics (the `evaluate_base` job): step 0, multiplier 0 and k=0 of the baselines."""
    return list(read_csv(base_metrics).to_dict("records"))
