"""Throughput: phaseflip's training and evaluation speed, measured side by side in one run.

    python -m phaseflip.tools.throughput                 # the default study's model (SmolLM2-135M), a few minutes
    python -m phaseflip.tools.throughput --tiny          # the tiny random Llama, seconds
    python -m phaseflip.tools.throughput --model-dir results/base_model --steps 4
    python -m phaseflip.tools.throughput --only dtype    # float32 vs bfloat16 matmul, and the dtype the study picks

Prints (and writes as JSON with --out):
- LoRA training reply tokens/s: phaseflip's loop vs a plain peft + transformers.Trainer loop on the
  identical examples, LoRA config, learning rate and effective batch: the ratio;
- pair scoring (margin/p_preferred) scenarios/s: batched vs one scenario at a time: the ratio;
- sampling new tokens/s for behavior_rate, batched (prompt encoded once for its n samples);
- a scenario's whole evaluation (pair scoring + n samples) per second: the evaluator's batched pass
  (`score_and_sample`: one prompt encoding for both) vs one scenario at a time with `transformers`
  `generate` per sample: the ratio;
- achieved FLOP/s of training and scoring as a fraction of this machine's dense matmul peak in the model's dtype,
  measured in the same run (MFU; FLOPs counted as 2N per token forward, 4N per token for LoRA
  training: forward plus input gradients, no base-weight gradients);
- the baselines (`--only baselines` runs just these): steering screen settings per second (every
  layer x 2 multipliers, at the default screen precision); ICL prompts per second at k=all with the
  shared shot prefix encoded once vs each prompt encoded whole; sampling decode tokens per second with
  the preallocated (static) KV cache vs the growing one, on the same prompts and seed; the other
  families' sampling round decoded in one call (as the evaluator does) vs one call per family (median of
  3 interleaved repeats each);
- peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch

from phaseflip.config import PROJECT_ROOT, load_study_config
from phaseflip.data import IN_DISTRIBUTION, Example, load_examples, load_retention, subset_per_family
from phaseflip.interventions.train import RunSpec, add_lora, train_run
from phaseflip.io import seed_everything, write_json
from phaseflip.model import base_model, scoring
from phaseflip.model.scoring import IGNORE, encode_reply, prompt_of, sample_replies, score_and_sample, score_reply_pairs

ROOT = PROJECT_ROOT  # data/ and results/ are read from the project


def matmul_peak(threads: int, size: int = 1536, reps: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """Dense matmul FLOP/s in `dtype` on this machine with `threads` threads (the MFU denominator: the
    model's compute dtype, since bfloat16 runs 2.4x faster than fp32 on a CPU with AVX512-BF16)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def dtype_figures(threads: int) -> dict[str, Any]:
    """float32 and bfloat16 matmul rates on this CPU (one thread and `threads`) and the compute dtypes the
    default study would pick here (`auto`, see dtype_choice), with the reason."""
    from phaseflip.dtype_choice import cpu_has_native_bfloat16, study_dtypes

    cfg = load_study_config({})
    figures: dict[str, Any] = {"cpu_native_bfloat16": cpu_has_native_bfloat16()}
    for n in sorted({1, threads}):
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            # bfloat16 is emulated on many CPUs (about 1 GFLOP/s): a smaller matrix keeps that case short
            size = 1024 if dtype == torch.float32 or figures["cpu_native_bfloat16"] else 384
            figures[f"matmul_gflops_{name}_{n}_threads"] = matmul_peak(n, size=size, reps=4, dtype=dtype) / 1e9
    for setting, choice in study_dtypes(cfg.model.dtype, cfg.steering.screen.dtype, "cpu").items():
        figures[f"study_picks_{setting}"] = f"{choice.name} ({choice.reason})"
    torch.set_num_threads(threads)
    return figures


def reference_trainer_loop(model: Any, tok: Any, examples: list[Example], lr: float, steps: int,
                           micro_batch: int, lora: Any, max_length: int) -> float:
    """Seconds per step of a plain peft + transformers.Trainer run on the same data and LoRA config."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    encoded = [encode_reply(tok, prompt_of(tok, ex), ex.preferred or "", max_length, ex.prompt_format)
               for ex in examples]
    data = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels} for ids, labels in encoded]
    times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            times[-1] = time.perf_counter() - times[-1]

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=max(1, len(data) // micro_batch), learning_rate=lr, max_steps=steps,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), seed=0,
            dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = Trainer(model=add_lora(model, lora), args=args, train_dataset=data,  # type: ignore[arg-type]
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE),
                          callbacks=[StepTimer()])
        trainer.train()
    return sum(times) / len(times)  # like phaseflip's figure, the first (warm-up) step included


def baseline_figures(model_dir: Path, threads: int) -> dict[str, Any]:
    """Steering screen settings/s, ICL prompts/s with and without prefix reuse, static vs growing decode cache."""
    from phaseflip.dtype_choice import choose_dtype
    from phaseflip.interventions.icl import icl_prompt, icl_shots
    from phaseflip.interventions.steering import screen, train_vector

    seed_everything(0)
    cfg = load_study_config({})
    torch.set_num_threads(threads)
    corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    data, e = cfg.behavior.data, cfg.eval
    scenarios = subset_per_family(load_examples(ROOT / data.eval, "eval"), e.max_scenarios_per_family)
    retention = [r["text"] for r in load_retention(ROOT / data.retention)][: e.max_retention_prompts]
    model, tok = base_model.load(model_dir)
    figures: dict[str, Any] = {}
    n_layers = model.config.num_hidden_layers
    pairs = [c for c in corrections if c.preferred and c.rejected] or corrections
    vector = train_vector(model, tok, pairs, cfg.steering.model_copy(update={"layers": "all"}))
    screen_dtype = choose_dtype(cfg.steering.screen.dtype, "cpu", setting="steering.screen.dtype")
    table = screen(model, tok, {"real": vector}, scenarios, retention, [1.0, 4.0], screen_dtype.dtype)
    figures[f"steering_screen_settings_per_s_{screen_dtype.name}"] = table.attrs["settings_per_s"]
    figures["steering_screen_settings"] = f"{len(table)} ({n_layers} layers x 2 multipliers)"

    # ICL at k=all, as the evaluator runs it (pair scores + n samples), with and without prefix reuse.
    shots = icl_shots(corrections, len(corrections), 0)
    prompts = [icl_prompt(tok, shots, ex) for ex in scenarios]
    replies = [[ex.preferred or "" for ex in scenarios], [ex.rejected or "" for ex in scenarios]]
    formats = [ex.prompt_format for ex in scenarios]
    timing, outputs = {}, {}
    for label, min_shared in (("reuse", scoring.MIN_SHARED_PREFIX), ("whole", 0)):
        saved, scoring.MIN_SHARED_PREFIX = scoring.MIN_SHARED_PREFIX, min_shared
        start = time.perf_counter()
        try:
            outputs[label] = score_and_sample(model, tok, prompts, replies, n=cfg.eval.n_samples,
                                              max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                              temperature=cfg.eval.temperature, prompt_formats=formats)[0]
        finally:
            scoring.MIN_SHARED_PREFIX = saved
        timing[label] = time.perf_counter() - start
    figures["icl_k_all_prompt_tokens_mean"] = sum(len(tok(p).input_ids) for p in prompts) / len(prompts)
    figures["icl_prompts_per_s_prefix_reuse"] = len(prompts) / timing["reuse"]
    figures["icl_prompts_per_s_each_prompt_whole"] = len(prompts) / timing["whole"]
    figures["icl_prefix_reuse_speedup"] = timing["whole"] / timing["reuse"]
    figures["icl_prefix_reuse_max_abs_logprob_diff"] = max(
        float((a.logprob_mean - b.logprob_mean).abs().max()) for a, b in zip(outputs["reuse"], outputs["whole"],
                                                                              strict=True))

    # Decoding: the evaluator's sampler on the eval prompts, preallocated vs growing KV cache.
    eval_prompts = [prompt_of(tok, ex) for ex in scenarios]
    for label, static in (("static", True), ("growing", False)):
        saved_static, scoring.STATIC_DECODE_CACHE = scoring.STATIC_DECODE_CACHE, static
        try:
            start = time.perf_counter()
            samples = sample_replies(model, tok, eval_prompts, cfg.eval.n_samples, cfg.eval.max_new_tokens,
                                     cfg.eval.batch_size, temperature=cfg.eval.temperature)
            figures[f"decode_new_tokens_per_s_{label}_cache"] = samples.new_tokens / (time.perf_counter() - start)
            figures[f"_replies_{label}"] = samples.replies
        finally:
            scoring.STATIC_DECODE_CACHE = saved_static
    figures["decode_static_cache_same_replies"] = str(figures.pop("_replies_static") == figures.pop("_replies_growing"))

    # The other families' first sampling round: one call for all of them (the evaluator) vs one call per
    # family (small decoding batches); interleaved repeats, the median of each.
    from statistics import median

    families: dict[str, list[str]] = {}
    for ex in scenarios:
        if ex.family != IN_DISTRIBUTION:
            families.setdefault(ex.family, []).append(prompt_of(tok, ex))

    def ood_round(groups: list[list[str]]) -> float:
        start = time.perf_counter()
        for group in groups:
            sample_replies(model, tok, group, cfg.eval.n_samples, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                           temperature=cfg.eval.temperature)
        return time.perf_counter() - start

    if families:
        together: list[float] = []
        apart: list[float] = []
        for rep in range(3):
            order = [(together, [sum(families.values(), [])]), (apart, list(families.values()))]
            for out, groups in order if rep % 2 == 0 else order[::-1]:
                out.append(ood_round(groups))
        figures["ood_round_s_one_call"] = median(together)
        figures["ood_round_s_per_family"] = median(apart)
        figures["ood_round_one_call_speedup"] = median(apart) / median(together)
        figures["ood_round_scenarios"] = f"{sum(len(v) for v in families.values())} in {len(families)} families"
    return figures


def run(model_dir: Path, steps: int, threads: int) -> dict[str, Any]:
    seed_everything(0)
    cfg = load_study_config({})
    torch.set_num_threads(threads)
    corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    scenarios = [s for s in subset_per_family(load_examples(ROOT / cfg.behavior.data.eval, "eval"), 4)
                 if s.preferred and s.rejected]
    model, tok = base_model.load(model_dir)
    peak = matmul_peak(threads, dtype=model.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    encoded = [encode_reply(tok, prompt_of(tok, c), c.preferred or "", cfg.train.max_length) for c in corrections]
    reply_tokens = sum(sum(t != IGNORE for t in labels) for _, labels in encoded)
    all_tokens = sum(len(ids) for ids, _ in encoded)
    figures: dict[str, Any] = {"model": str(model_dir), "n_parameters": n_params, "threads": threads,
                               "compute_dtype": str(model.dtype).removeprefix("torch."),
                               "matmul_peak_gflops": peak / 1e9, "train_examples": len(corrections),
                               "reply_tokens_per_step": reply_tokens}

    # Training: phaseflip's loop vs the reference Trainer loop on the identical configuration (same
    # examples, LoRA, lr, one full batch per step); then phaseflip's default length-sorted micro-batches.
    def ours(micro_batch: int) -> float:
        nonlocal model, tok
        model, tok = base_model.load(model_dir)
        train_cfg = cfg.train.model_copy(update={"max_steps": steps + 1, "checkpoint_steps": [steps + 1],
                                                 "micro_batch_size": micro_batch})
        with tempfile.TemporaryDirectory() as tmp:
            train_run(model, tok, corrections, RunSpec(1e-3, "all", 0, 0), train_cfg, tmp)
            log = json.loads((Path(tmp) / "run.json").read_text())
        return float(log["seconds"]) / (steps + 1)

    full_batch = len(corrections)
    model, tok = base_model.load(model_dir)
    theirs = reference_trainer_loop(model, tok, corrections, 1e-3, steps + 1, full_batch, cfg.train.lora,
                                    cfg.train.max_length)
    ours_full, ours_micro = ours(full_batch), ours(cfg.train.micro_batch_size)
    figures["reference_trainer_reply_tokens_per_s"] = reply_tokens / theirs
    figures["train_reply_tokens_per_s_same_config"] = reply_tokens / ours_full
    figures["train_speedup_vs_reference_same_config"] = theirs / ours_full
    figures[f"train_reply_tokens_per_s_micro_batch_{cfg.train.micro_batch_size}"] = reply_tokens / ours_micro
    figures["train_speedup_vs_reference_default_loop"] = theirs / ours_micro
    figures["train_mfu_default_loop"] = 4 * n_params * all_tokens / ours_micro / peak

    # Scoring: batched vs one scenario at a time (preferred + rejected per scenario).
    model, tok = base_model.load(model_dir)
    prompts = [prompt_of(tok, s) for s in scenarios]
    pairs = [[s.preferred or "" for s in scenarios], [s.rejected or "" for s in scenarios]]
    timings = {}
    for batch in (cfg.eval.batch_size, 1):
        start = time.perf_counter()
        scores = score_reply_pairs(model, tok, prompts, pairs, batch_size=batch)
        timings[batch] = time.perf_counter() - start
    scored_tokens = sum(len(tok(p, add_special_tokens=False).input_ids) for p in prompts) + \
        int(sum(s.n_tokens.sum() for s in scores))
    figures["scoring_scenarios_per_s_batched"] = len(scenarios) / timings[cfg.eval.batch_size]
    figures["scoring_scenarios_per_s_one_at_a_time"] = len(scenarios) / timings[1]
    figures["scoring_batched_speedup"] = timings[1] / timings[cfg.eval.batch_size]
    figures["scoring_mfu"] = 2 * n_params * scored_tokens / timings[cfg.eval.batch_size] / peak

    # Sampling for behavior_rate as the evaluator does it: each prompt encoded once, n samples decoded
    # together, many prompts per batch.
    n = cfg.eval.n_samples
    start = time.perf_counter()
    samples = sample_replies(model, tok, prompts, n, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                             temperature=cfg.eval.temperature)
    batched_sampling = time.perf_counter() - start
    figures["sampling_new_tokens_per_s"] = samples.new_tokens / batched_sampling

    # A scenario's whole evaluation (pair scoring + n samples), batched vs one scenario at a time with
    # transformers' own `generate` per sample: the way a hand-written eval loop does it.
    start = time.perf_counter()
    one_tokens = 0
    for prompt, ex in zip(prompts, scenarios, strict=True):
        score_reply_pairs(model, tok, [prompt], [[ex.preferred or ""], [ex.rejected or ""]], batch_size=1)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        for _ in range(n):
            out = cast(Any, model).generate(**ids, do_sample=True, temperature=cfg.eval.temperature, top_k=0,
                                            max_new_tokens=cfg.eval.max_new_tokens, pad_token_id=tok.pad_token_id,
                                            eos_token_id=tok.eos_token_id)
            one_tokens += int(out.shape[1] - ids.input_ids.shape[1])
    one_at_a_time = time.perf_counter() - start
    # The evaluator's own pass: one encoding of each prompt for its pair scores, probe and n samples.
    start = time.perf_counter()
    score_and_sample(model, tok, prompts, pairs, n=n, max_new_tokens=cfg.eval.max_new_tokens,
                     batch_size=cfg.eval.batch_size, temperature=cfg.eval.temperature)
    batched_eval = time.perf_counter() - start
    figures["sampling_new_tokens_per_s_one_at_a_time"] = one_tokens / one_at_a_time
    figures["evaluation_scenarios_per_s_batched"] = len(scenarios) / batched_eval
    figures["evaluation_scenarios_per_s_one_at_a_time"] = len(scenarios) / one_at_a_time
    figures["evaluation_batched_speedup"] = one_at_a_time / batched_eval
    figures.update(baseline_figures(model_dir, threads))
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="use the tiny random Llama (seconds)")
    p.add_argument("--model-dir", type=Path, default=None, help="a materialised model (default: results/base_model)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--only", choices=["baselines", "dtype"], default=None,
                   help="only the baseline figures (steering screen, ICL prefix reuse, decode cache), or only the "
                        "float32 / bfloat16 matmul rates and the dtype the study picks on this CPU (seconds)")
    args = p.parse_args(argv)
    if args.only == "dtype":
        _print(dtype_figures(args.threads), args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if args.tiny:
            model_dir = Path(tmp) / "tiny"
            base_model.materialise(load_study_config({"study": "smoke"}).model, model_dir)
        elif model_dir is None:
            model_dir = ROOT / "results" / "base_model"
            if not (model_dir / "manifest.json").is_file():
                print("materialising the default model into results/base_model (run `snakemake results/base_model`)")
                base_model.materialise(load_study_config({}).model, model_dir)
        if args.only == "baselines":
            figures = baseline_figures(model_dir, args.threads)
            figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        else:
            figures = {**dtype_figures(args.threads), **run(model_dir, args.steps, args.threads)}
    _print(figures, args.out)
    return 0


def _print(figures: dict[str, Any], out: Path | None) -> None:
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if out:
        write_json(out, figures)


if __name__ == "__main__":
    raise SystemExit(main())
