"""Stage pilot: probe runs that place the grid's learning rates (and checkpoints) from data
(`interventions.pilot`); runs only under `train.lrs: auto` or `train.checkpoint_steps: auto`.

    python -m phaseflip.cli pilot --params '{...}' --base results/base_model \\
        --corrections results/corrections/train.jsonl --eval results/corrections/eval.jsonl --out results/pilot
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import EvalConfig, PilotConfig, TrainConfig
from phaseflip.data import IN_DISTRIBUTION, Example, load_examples
from phaseflip.interventions.pilot import (
    GRID_FILE,
    Probe,
    clear_checkpoints,
    grid_record,
    probe_folder,
    probe_key,
    run_pilot,
)
from phaseflip.interventions.train import RunSpec, train_run
from phaseflip.io import DataError, read_json, write_csv, write_json
from phaseflip.measure.evaluator import Evaluator
from phaseflip.stages.inputs import judge_for, load_model


def pilot_scenarios(scenarios: list[Example], n: int) -> list[Example]:
    """The first `n` in-distribution scenarios, those with a reference pair first (p_preferred needs one)."""
    inside = [s for s in scenarios if s.family == IN_DISTRIBUTION]
    if not inside:
        raise DataError("the pilot needs in-distribution eval scenarios; the eval set has none")
    paired = [s for s in inside if s.preferred and s.rejected]
    return (paired + [s for s in inside if s not in paired])[:n]


def pilot_eval_config(params: dict[str, Any], n_samples: int) -> EvalConfig:
    """The study's eval settings with exactly `n_samples` replies per scenario per step (one round)."""
    cfg = EvalConfig.model_validate(params["eval"])
    adaptive = cfg.adaptive.model_copy(update={"max_samples": n_samples})
    return cfg.model_copy(update={"n_samples": n_samples, "adaptive": adaptive})


def _value(rows: list[dict[str, Any]], metric: str) -> tuple[float, int]:
    for r in rows:
        if r["metric"] == metric and r["family"] == IN_DISTRIBUTION:
            return float(r["value"]), int(r["n"])
    return float("nan"), 0


def run(params: dict[str, Any], out: str, base: str, corrections: str, eval: str) -> None:
    # The pilot's params hold the train section without the other grid points (config.PILOT_TRAIN_FIELDS);
    # its own point is the probes': every real correction, no dreams, the pilot's seed.
    section = params["train"]
    seed = PilotConfig.model_validate(section.get("pilot", {})).seed
    train = TrainConfig.model_validate({**section, "n_real": ["all"], "dream_k": [0], "seeds": [seed],
                                        "extra_runs": [], "negative_control": {"enabled": False}})
    threshold = float(params["forecast"]["flip_threshold"])
    pilot = train.pilot
    real = load_examples(corrections, "corrections")
    scenarios = pilot_scenarios(load_examples(eval, "eval"), pilot.max_scenarios)
    eval_cfg = pilot_eval_config(params, pilot.n_samples)
    judge = judge_for(params, base)
    folder = Path(out)
    started = time.time()
    print(f"pilot: {len(real)} corrections, {len(scenarios)} scenarios x {pilot.n_samples} replies per step, "
          f"up to {train.max_steps} steps per probe")

    def measure(evaluator: Evaluator, model: Any, step: int, probe: Probe) -> None:
        model.eval()
        rows = evaluator.evaluate(model, step=step, sample="in_distribution", retention=False)
        rate, n = _value(rows, "behavior_rate")
        p_pref, _ = _value(rows, "p_preferred")
        probe.add(step, round(rate * n), n, p_pref)
        model.train()

    def probe(lr: float) -> Probe:
        where = probe_folder(folder, lr)
        key = probe_key(params, lr)
        cached = where / "curve.json"
        if cached.is_file() and (saved := read_json(cached)).get("key") == key:
            print(f"pilot: lr {lr:.2g}: reusing the finished probe in {cached}")
            return Probe(**saved["probe"])
        t0 = time.time()
        model, tok = load_model(base, params, "pilot")
        evaluator = Evaluator(tok, scenarios, [], judge, eval_cfg, seed=int(params["seed"]))
        result = Probe(lr)
        measure(evaluator, model, 0, result)

        def on_step(step: int, peft_model: Any) -> bool:
            measure(evaluator, peft_model, step, result)
            return result.above(threshold, pilot.above_steps)

        spec = RunSpec(lr, "all", 0, pilot.seed)
        recipe = train.model_copy(update={"checkpoint_steps": [train.max_steps]})
        clear_checkpoints(where)  # an interrupted probe starts over: its curve is measured along the way
        summary = train_run(model, tok, real, spec, recipe, where, on_step=on_step)
        clear_checkpoints(where)
        result.status, result.seconds = str(summary["status"]), round(time.time() - t0, 1)
        write_json(cached, {"key": key, "probe": asdict(result)})
        return result

    probes, choice = run_pilot(probe, train, threshold)
    seconds = time.time() - started
    rows = [{"lr": p.lr, "step": s, "k": k, "n": n, "rate": k / n if n else float("nan"), "p_preferred": pp}
            for p in probes for s, k, n, pp in zip(p.steps, p.k, p.n, p.p_preferred, strict=True)]
    write_csv(folder / "probes.csv", pd.DataFrame(rows))
    write_json(folder / GRID_FILE, grid_record(probes, choice, threshold, seconds))
    print(f"pilot: {len(probes)} probes in {seconds:.0f}s; wrote {folder / GRID_FILE}")
