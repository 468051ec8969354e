"""Expected cost of a study preset: how much work it is, and how long it takes on CPU and on a GPU.

    python -m phaseflip.tools.cost --preset full
    python -m phaseflip.tools.cost --preset default --json

Counts come from the composed config and the behavior's data (tokenized with the study's tokenizer):
runs, evaluated checkpoints, training steps and tokens, evaluation forward tokens, sampled tokens.
FLOPs: 6 x params per training token (forward + backward; LoRA needs less, so this is an upper bound),
2 x params per scored, prefilled or sampled token.

CPU core-hours: FLOPs divided by the effective FLOP/s *measured* in the default study on 2 CPU cores
(its train and evaluate jobs' wall time, `results/benchmarks/`, counted with the same FLOP model), plus
a per-job start-up cost. GPU-hours: FLOPs at an *assumed* GPU peak and utilisation, or the assumed
per-step latency where a small model is latency-bound (sampling, small micro-batches), whichever is
larger. Every assumption is printed with the result.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from phaseflip.config import PROJECT_ROOT, StudyConfig, load_study_config
from phaseflip.data import Example, load_examples, load_retention, subset_per_family
from phaseflip.interventions.train import grid

# The default study on 2 CPU cores (fp32, 1 thread per job, two jobs side by side), SmolLM2-135M,
# results/benchmarks/*.tsv of the committed dvc.lock: train jobs 73.7 / 127.0 / 166.4 / 200.7 / 203.6 s
# (16 steps; 4 to 12 examples), evaluate jobs 228.1 / 231.0 / 234.8 / 237.8 / 239.4 s (7 checkpoints);
# imports + model load + references ~9 s per job.
MEASURED_CPU = {"train_job_s": 154.3, "evaluate_job_s": 234.2, "job_startup_s": 9.0, "n_parameters": 134_515_008}

# Assumptions for one GPU (not measured: this project's machines have none). H100 SXM dense bf16 peak;
# utilisation of a 135M-parameter model with ~100-token sequences is low, and Hugging Face `generate`
# pays a per-token latency (kernel launches, Python) whatever the batch.
GPU_ASSUMPTIONS = {
    "gpu": "NVIDIA H100 SXM, bf16",
    "peak_flops": 989e12,
    "mfu_train": 0.05,
    "mfu_eval": 0.05,
    "decode_step_s": 0.025,  # one generate() step for a batch, 30 layers
    "train_micro_batch_s": 0.040,  # forward + backward of one micro-batch
    "job_startup_s": 30.0,  # imports, model load, CUDA context
}


@dataclass
class TokenStats:
    """Token lengths of the behavior's data under the study's tokenizer and chat template."""

    train_seq: list[int]  # prompt + preferred reply of each correction (what a training step processes)
    scenarios: list[tuple[int, int, int]]  # eval scenario: (prompt, preferred, rejected) tokens
    retention: list[int]  # retention prompts


@dataclass
class Workload:
    runs: int
    jobs: int
    checkpoints: int  # evaluated checkpoints over all runs
    train_steps: int
    train_micro_batches: int
    train_tokens: int
    eval_passes: int  # full evaluations: checkpoints + base + steering settings + ICL ks
    eval_forward_tokens: int  # scored and prefilled tokens
    sampled_tokens: int
    decode_steps: int  # sequential generate() steps (batch by batch)
    train_flops: float
    eval_flops: float


def token_stats(cfg: StudyConfig, count: Callable[[Example, str | None], int], root: Path = PROJECT_ROOT,
                retention_count: Callable[[str], int] | None = None) -> TokenStats:
    """`count(example, reply)`: tokens of the example's prompt (+ reply when given)."""
    data = cfg.behavior.data
    corrections = load_examples(root / data.corrections, "corrections")
    scenarios = subset_per_family(load_examples(root / data.eval, "eval"), cfg.eval.max_scenarios_per_family)
    retention = [r["text"] for r in load_retention(root / data.retention)][: cfg.eval.max_retention_prompts]
    rcount = retention_count or (lambda text: max(1, len(text) // 4))
    scored = []
    for ex in scenarios:
        prompt = count(ex, None)
        pref = count(ex, ex.preferred) - prompt if ex.preferred and ex.rejected else 0
        rej = count(ex, ex.rejected) - prompt if ex.preferred and ex.rejected else 0
        scored.append((prompt, pref, rej))
    return TokenStats(train_seq=[min(count(c, c.preferred or ""), cfg.train.max_length) for c in corrections],
                      scenarios=scored, retention=[min(rcount(t), 128) for t in retention])


def workload(cfg: StudyConfig, stats: TokenStats, n_parameters: int, n_layers: int) -> Workload:
    # Under `lrs: auto` the grid has one lr per pilot target (which ones does not change the cost); the
    # pilot's own probes are not in this estimate (the report measures them: "Pilot cost").
    placeholder = [cfg.train.pilot.start_lr * 2.0 ** i for i in range(len(cfg.train.pilot.targets))]
    runs = grid(cfg.train, placeholder if cfg.train.lrs == "auto" else None)
    n_checkpoints = (cfg.train.pilot.n_checkpoints if cfg.train.checkpoint_steps == "auto"
                     else len(cfg.train.checkpoint_steps))
    mean_seq = sum(stats.train_seq) / len(stats.train_seq)
    n_corr = len(stats.train_seq)
    train_tokens = micro = 0
    for spec in runs:
        n_real = n_corr if spec.n_real == "all" else min(int(spec.n_real), n_corr)
        n_examples = n_real * (1 + spec.dream_k)  # dreams assumed as long as their parent correction
        batch = min(cfg.train.batch_size or n_examples, n_examples)
        train_tokens += round(cfg.train.max_steps * batch * mean_seq)
        micro += cfg.train.max_steps * math.ceil(batch / cfg.train.micro_batch_size)

    e = cfg.eval
    n_scen = len(stats.scenarios)
    prompts = sum(p for p, _, _ in stats.scenarios)
    pairs = sum(p + a + b for p, a, b in stats.scenarios if a)
    sampled_per_pass = n_scen * e.n_samples * e.max_new_tokens
    # each prompt is encoded once (its cache serves pair scoring, the probe and the n samples), its
    # reference replies are scored on that cache, and the retention texts are scored
    unpaired_prompts = sum(p for p, a, _ in stats.scenarios if not a)
    forward_per_pass = pairs + unpaired_prompts + sum(stats.retention)
    decode_per_pass = math.ceil(n_scen * e.n_samples / e.batch_size) * e.max_new_tokens

    layers = n_layers if cfg.steering.layers == "all" else len(cfg.steering.layers)
    # The screen scores every (training set, layer, multiplier) on blocks above the layer only (half the
    # model on average) and without sampling; only `screen.full_evaluations` per set get a full pass.
    screen_settings = len(cfg.steering.training_sets) * layers * len([m for m in cfg.steering.multipliers if m != 0])
    steering_passes = len(cfg.steering.training_sets) * cfg.steering.screen.full_evaluations
    checkpoints = len(runs) * n_checkpoints
    passes = checkpoints + 1 + steering_passes + len(cfg.icl.ks)
    # ICL prompts carry k corrections in context, encoded once per prompt
    icl_extra = sum((len(stats.train_seq) if k == "all" else int(k)) * mean_seq * n_scen for k in cfg.icl.ks)
    # each evaluate job re-takes the base model's probe and retention references once
    references = len(runs) * (prompts + sum(stats.retention))
    eval_forward = round(passes * forward_per_pass + icl_extra + references
                         + screen_settings * (pairs + sum(stats.retention)) / 2)
    sampled = passes * sampled_per_pass
    return Workload(
        runs=len(runs), jobs=2 * len(runs) + 5, checkpoints=checkpoints,
        train_steps=len(runs) * cfg.train.max_steps, train_micro_batches=micro, train_tokens=train_tokens,
        eval_passes=passes, eval_forward_tokens=eval_forward, sampled_tokens=sampled,
        decode_steps=passes * decode_per_pass,
        train_flops=6.0 * n_parameters * train_tokens, eval_flops=2.0 * n_parameters * (eval_forward + sampled),
    )


def cpu_rates(default: Workload, measured: dict[str, float] = MEASURED_CPU) -> dict[str, float]:
    """Effective CPU FLOP/s of training and evaluation, from the default study's measured job times."""
    per_run_train = default.train_flops / default.runs
    eval_per_run = default.eval_flops * default.checkpoints / default.eval_passes / default.runs
    return {
        "train_flops_per_s": per_run_train / (measured["train_job_s"] - measured["job_startup_s"]),
        "eval_flops_per_s": eval_per_run / (measured["evaluate_job_s"] - measured["job_startup_s"]),
    }


def estimate(work: Workload, rates: dict[str, float], n_parameters: float = MEASURED_CPU["n_parameters"],
             gpu: dict[str, Any] = GPU_ASSUMPTIONS,
             cpu_startup_s: float = MEASURED_CPU["job_startup_s"]) -> dict[str, float]:
    cpu_s = (work.train_flops / rates["train_flops_per_s"] + work.eval_flops / rates["eval_flops_per_s"]
             + work.jobs * cpu_startup_s)
    train_gpu = max(work.train_flops / (gpu["peak_flops"] * gpu["mfu_train"]),
                    work.train_micro_batches * gpu["train_micro_batch_s"])
    score_gpu = 2.0 * n_parameters * work.eval_forward_tokens / (gpu["peak_flops"] * gpu["mfu_eval"])
    sample_gpu = max(2.0 * n_parameters * work.sampled_tokens / (gpu["peak_flops"] * gpu["mfu_eval"]),
                     work.decode_steps * gpu["decode_step_s"])
    gpu_s = train_gpu + score_gpu + sample_gpu + work.jobs * gpu["job_startup_s"]
    # The rates were measured with 1-thread jobs, two side by side: job-seconds are core-seconds, and
    # 2 cores run two jobs at once.
    return {"cpu_core_hours": cpu_s / 3600, "cpu_wall_hours_2_cores": cpu_s / 2 / 3600, "gpu_hours": gpu_s / 3600,
            "gpu_hours_train": train_gpu / 3600, "gpu_hours_sampling": sample_gpu / 3600,
            "gpu_hours_scoring": score_gpu / 3600}


Counters = tuple[Callable[[Example, str | None], int], Callable[[str], int]]


def tokenizer_counters(model_dir: Path | None, cfg: StudyConfig) -> tuple[Counters, str]:
    """Token counters from the study's tokenizer: the materialised model's, else the GGUF's."""
    from phaseflip.model.scoring import prompt_of

    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        source = str(model_dir)
    else:
        from phaseflip.model.base_model import _tokenizer_from_gguf

        tok = _tokenizer_from_gguf(cfg.model)
        source = f"{cfg.model.gguf_package}/{cfg.model.gguf_file}"

    def count(ex: Example, reply: str | None) -> int:
        text = prompt_of(tok, ex) + (reply or "")
        return len(tok(text, add_special_tokens=False).input_ids)

    return (count, lambda text: len(tok(text, add_special_tokens=False).input_ids)), source


def report(preset: str, model_dir: Path | None = PROJECT_ROOT / "results" / "base_model") -> dict[str, Any]:
    cfg = load_study_config({"study": preset}, check_paths=False)
    default_cfg = load_study_config({}, check_paths=False)
    (count, rcount), source = tokenizer_counters(model_dir, default_cfg)
    n_params, n_layers = MEASURED_CPU["n_parameters"], 30  # SmolLM2-135M
    work = workload(cfg, token_stats(cfg, count, retention_count=rcount), int(n_params), n_layers)
    default_work = workload(default_cfg, token_stats(default_cfg, count, retention_count=rcount), int(n_params),
                            n_layers)
    rates = cpu_rates(default_work)
    return {"preset": preset, "model": cfg.model.name, "tokenizer": source, "workload": asdict(work),
            "cpu_rates_measured": rates, "cpu_measurement": MEASURED_CPU, "gpu_assumptions": GPU_ASSUMPTIONS,
            "estimate": estimate(work, rates)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", help="a conf/study preset: smoke, default, full")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    out = report(args.preset)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    w, est = out["workload"], out["estimate"]
    print(f"preset {args.preset} ({out['model']}): {w['runs']} runs, {w['jobs']} jobs, "
          f"{w['checkpoints']} checkpoints evaluated ({w['eval_passes']} evaluation passes incl. base, "
          f"steering settings and ICL ks)")
    print(f"  training: {w['train_steps']} steps, {w['train_micro_batches']} micro-batches, "
          f"{w['train_tokens']:,} tokens, {w['train_flops']:.3g} FLOPs (6 x params x tokens)")
    print(f"  evaluation: {w['eval_forward_tokens']:,} scored/prefilled tokens, {w['sampled_tokens']:,} sampled "
          f"tokens in {w['decode_steps']:,} decode steps, {w['eval_flops']:.3g} FLOPs (2 x params x tokens)")
    rates = out["cpu_rates_measured"]
    print(f"  CPU (measured, default study, 2 cores): train {rates['train_flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"eval {rates['eval_flops_per_s'] / 1e9:.1f} GFLOP/s effective per 1-thread job -> "
          f"{est['cpu_core_hours']:.1f} core-hours, {est['cpu_wall_hours_2_cores']:.1f} h on 2 cores")
    g = out["gpu_assumptions"]
    print(f"  GPU (assumed: {g['gpu']}, peak {g['peak_flops'] / 1e12:.0f} TFLOP/s, MFU train {g['mfu_train']:.0%} / "
          f"eval {g['mfu_eval']:.0%}, {g['decode_step_s'] * 1e3:.0f} ms per decode step, "
          f"{g['train_micro_batch_s'] * 1e3:.0f} ms per micro-batch): {est['gpu_hours']:.1f} GPU-hours "
          f"(train {est['gpu_hours_train']:.1f}, sampling {est['gpu_hours_sampling']:.1f}, "
          f"scoring {est['gpu_hours_scoring']:.2f}); one GPU per job on a cluster divides the wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
