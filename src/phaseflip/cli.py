"""One entry point per stage. Snakemake rules call these; so can you.

    python -m phaseflip.cli <stage> --params '<json of the config sections it needs>' [files...]

Stages: base_model, corrections, dreams, steering, icl, train, evaluate, forecast, forecast_bench, report.
Every stage validates its params, writes its outputs atomically, and exits 2 with a one-line
message (file, line, field) on bad input instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import (
    BehaviorConfig,
    ConfigError,
    DreamsConfig,
    EvalConfig,
    ForecastConfig,
    IclConfig,
    ModelConfig,
    SteeringConfig,
    SteeringVectorConfig,
    TrainConfig,
    TrainRecipe,
)
from phaseflip.data import Example, load_examples, load_retention, subset_per_family
from phaseflip.io import (
    DataError,
    pick_device,
    read_csv,
    read_json,
    seed_everything,
    set_threads,
    write_csv,
    write_json,
    write_jsonl,
)

RUN_METADATA = ("lr", "n_real", "dream_k", "seed", "control", "status")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = json.loads(args.params)
    seed_everything(int(params.get("seed", 0)))
    set_threads(args.threads)
    return params


def _model(args: argparse.Namespace, params: dict[str, Any]) -> Any:
    """The base model and tokenizer; the stage's log gets one line naming the fast paths that fall back."""
    from phaseflip.model import base_model
    from phaseflip.model.architecture import announce_all

    trust = bool(params.get("model", {}).get("trust_remote_code", False))
    model, tok = base_model.load(args.base, pick_device(params.get("device", "auto")), trust_remote_code=trust)
    announce_all(model, getattr(args, "stage", "model"))
    return model, tok


def _steering_vector_config(params: dict[str, Any]) -> SteeringVectorConfig:
    """The vector-defining steering fields: what Snakemake passes (`steering.vector`), or picked from a
    whole `steering` section when the stage is called by hand."""
    section = params["steering"]
    return SteeringVectorConfig.model_validate({k: section[k] for k in SteeringVectorConfig.model_fields
                                                if k in section})


def _judge(args: argparse.Namespace, params: dict[str, Any]) -> Any:
    """The behavior's judge: rubric, or a model judge (by default the study's own base model)."""
    from phaseflip.measure.judge import make_judge

    return make_judge(BehaviorConfig.model_validate(params["behavior"]), model_dir=args.base)


def _eval_set(args: argparse.Namespace, params: dict[str, Any]) -> tuple[list[Example], list[str], EvalConfig]:
    cfg = EvalConfig.model_validate(params["eval"])
    scenarios = subset_per_family(load_examples(args.eval, "eval"), cfg.max_scenarios_per_family)
    retention = [r["text"] for r in load_retention(args.retention)][: cfg.max_retention_prompts]
    return scenarios, retention, cfg


def cmd_base_model(args: argparse.Namespace) -> None:
    from phaseflip.model.base_model import materialise

    params = _params(args)
    manifest = materialise(ModelConfig.model_validate(params["model"]), args.out, seed=int(params["seed"]),
                           device=params.get("device", "auto"))
    print(f"base_model: {manifest['model']} ({manifest['n_parameters']:,} parameters) -> {args.out}; "
          f"compute dtype {manifest['dtype']} ({manifest['dtype_reason']})")


def cmd_corrections(args: argparse.Namespace) -> None:
    """Validate the behavior's data, fill missing `rejected`, make missing reference pairs (corrections.py)."""
    from functools import cache

    from phaseflip.prepare.corrections import prepare

    params = _params(args)
    behavior = BehaviorConfig.model_validate(params["behavior"])
    report = prepare(behavior, Path(args.out), int(params["seed"]), cache(lambda: _model(args, params)),
                     lambda: _judge(args, params))
    refs = report["references"]
    print(f"corrections: {report['corrections']} ({report['rejected_filled']} rejected filled), eval {report['eval']} "
          f"({refs['with_pair']} with a reference pair, {refs['generated_pairs']} generated), "
          f"retention {report['retention']}")


def cmd_dreams(args: argparse.Namespace) -> None:
    from phaseflip.config import split_k
    from phaseflip.measure.judge import make_judge
    from phaseflip.prepare.dreams import ModelWriter, generate_dreams, vocab_for

    params = _params(args)
    behavior = BehaviorConfig.model_validate(params["behavior"])
    cfg = DreamsConfig.model_validate(params["dreams"])
    corrections, evals = load_examples(args.corrections, "corrections"), load_examples(args.eval, "eval")
    vocab = vocab_for(cfg, behavior.data.dream_vocab)
    writer = None
    if split_k(cfg.k_per_correction, list(cfg.generators)).get("model"):
        if not args.base:
            raise ConfigError("dreams.generators includes 'model': pass --base (the base model folder)")
        writer = ModelWriter(*_model(args, params))
    judge = make_judge(behavior, model_dir=args.base)
    dreams, report = generate_dreams(corrections, evals, vocab, judge, cfg, int(params["seed"]), writer=writer,
                                     description=behavior.description)
    out = Path(args.out)
    write_jsonl(out / "dreams.jsonl", [d.to_json() for d in dreams])
    write_json(out / "dream_report.json", report)
    dropped = ", ".join(f"{k[8:]} {v}" for k, v in report["counts"].items() if k.startswith("dropped_")) or "none"
    print(f"dreams: kept {len(dreams)} of {report['counts'].get('generated', 0)} generated (dropped: {dropped})")


def _base_rows(args: argparse.Namespace, **tags: Any) -> list[dict[str, Any]]:
    """The base model's metrics (the `evaluate_base` job), tagged as one setting of a baseline sweep."""
    return [dict(r, **tags) for r in read_csv(args.base_metrics).to_dict("records")]


def cmd_steering_vectors(args: argparse.Namespace) -> None:
    """One contrastive vector per training set (and always the real one: steering_cosine's reference)."""
    from phaseflip.interventions.steering import save_vector, train_vector, vector_file, vector_sets

    params = _params(args)
    cfg = _steering_vector_config(params)
    model, tok = _model(args, params)
    out = Path(args.out)
    started = time.time()
    for training_set in vector_sets(cfg):
        examples = load_examples(args.corrections, "corrections")
        if training_set == "real_and_dreams":
            examples += _dreams(args.dreams)
        vector = train_vector(model, tok, examples, cfg)
        save_vector(vector, out / vector_file(training_set),
                    {"training_set": training_set, "pair_ids": [e.id for e in examples if e.preferred and e.rejected],
                     "read_token_index": cfg.read_token_index, "layers": sorted(vector.layer_activations)})
    print(f"steering_vectors: {vector_sets(cfg)} in {time.time() - started:.0f}s")


def cmd_steering(args: argparse.Namespace) -> None:
    """The screen over every (training set, layer, multiplier), then the full evaluation of the best few."""
    from phaseflip.dtype_choice import choose_dtype
    from phaseflip.interventions.steering import load_vector, screen_and_evaluate, vector_file
    from phaseflip.measure.evaluator import Evaluator

    params = _params(args)
    cfg = SteeringConfig.model_validate(params["steering"])
    model_cfg = ModelConfig.model_validate(params["model"])
    screen_dtype = choose_dtype(cfg.screen.dtype, pick_device(params.get("device", "auto")),
                                model_cfg.allow_emulated_bfloat16, "steering.screen.dtype")
    print(f"steering: screen in {screen_dtype.line()}")
    cfg = cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"dtype": screen_dtype.name})})
    model, tok = _model(args, params)
    scenarios, retention, eval_cfg = _eval_set(args, params)
    vectors: dict[str, Any] = {t: load_vector(Path(args.vectors) / vector_file(t))[0] for t in cfg.training_sets}
    evaluator = Evaluator(tok, scenarios, retention, _judge(args, params), eval_cfg, seed=int(params["seed"]))
    table, rows, seconds = screen_and_evaluate(model, tok, vectors, evaluator, cfg)
    out = Path(args.out)
    write_csv(out / "steering_screen.csv", table)
    write_csv(out / "steering_metrics.csv",
              pd.DataFrame(_base_rows(args, training_set="none", layer=-1, multiplier=0.0) + rows))
    if table.empty:
        print("steering: no in_distribution scenario has a reference pair; nothing to screen")
        return
    print(f"steering: screened {len(table)} settings ({len(cfg.training_sets)} training sets x "
          f"{table.layer.nunique()} layers x {table.multiplier.nunique()} multipliers) in {seconds['screen']:.0f}s "
          f"({len(table) / max(seconds['screen'], 1e-9):.2f} settings/s); full evaluation of "
          f"{int(table.selected.sum())} in {seconds['full']:.0f}s")


def cmd_icl(args: argparse.Namespace) -> None:
    from phaseflip.interventions.icl import evaluate_icl, resolve_k
    from phaseflip.measure.evaluator import Evaluator

    params = _params(args)
    cfg = IclConfig.model_validate(params["icl"])
    model, tok = _model(args, params)
    corrections = load_examples(args.corrections, "corrections")
    scenarios, retention, eval_cfg = _eval_set(args, params)
    evaluator = Evaluator(tok, scenarios, retention, _judge(args, params), eval_cfg, seed=int(params["seed"]))
    ks = sorted({resolve_k(k, len(corrections)) for k in cfg.ks})
    # k=0 is the base model: its rows come from the evaluate_base job. Retention prompts carry no
    # shots, so retention_kl is 0 by construction and not recomputed.
    rows: list[dict[str, Any]] = _base_rows(args, k=0) if 0 in ks else []
    started = time.time()
    icl_rows, shots_used = evaluate_icl(evaluator, model, tok, corrections, ks, int(params["seed"]))
    rows += icl_rows
    out = Path(args.out)
    write_csv(out / "icl_metrics.csv", pd.DataFrame(rows))
    write_json(out / "icl_shots.json", {0: [], **shots_used})
    print(f"icl: k in {ks} in {time.time() - started:.0f}s")


def _dreams(path: str) -> list[Example]:
    """The dreams file; empty (K=0) is allowed, missing is an error naming it."""
    if not Path(path).is_file():
        raise DataError(f"{path}: dreams file not found (written by rule dreams; run it first)")
    return load_examples(path, "corrections") if Path(path).stat().st_size else []


def cmd_train(args: argparse.Namespace) -> None:
    from phaseflip.interventions.train import greedy_replies, parse_run_id, train_run, training_examples

    params = _params(args)
    cfg = TrainRecipe.of(params["train"])  # the recipe only: the run's point is its id
    spec = parse_run_id(args.run_id)
    # Every data file is read (and a bad one reported) before the model loads.
    corrections, dreams = load_examples(args.corrections, "corrections"), _dreams(args.dreams)
    unrelated = [r["text"] for r in load_retention(args.retention)]  # the irrelevant control's replies
    model, tok = _model(args, params)
    examples = training_examples(spec, corrections, dreams, unrelated,
                                 own_replies=partial(greedy_replies, model, tok, max_length=cfg.max_length))
    base_sha = read_json(Path(args.base) / "manifest.json")["files"]["model.safetensors"]
    summary = train_run(model, tok, examples, spec, cfg, args.out, base_fingerprint=base_sha)
    print(f"train {spec.run_id}: {summary['status']} after step {summary['last_good_step']} "
          f"({summary['seconds']}s, {summary['reply_tokens_per_s']} reply tokens/s)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Base model as step 0, then every checkpoint of the run: adapters swapped in, model loaded once."""
    from phaseflip.interventions.steering import sweep_layers, vector_for_layer
    from phaseflip.interventions.train import add_lora, merged_checkpoint
    from phaseflip.measure.evaluator import Evaluator, SteeringReference, evaluate_run

    params = _params(args)
    model, tok = _model(args, params)
    steering = None
    if args.steering_vector:  # the reference for steering_cosine: the real-corrections vector, middle layer
        layers = sweep_layers(_steering_vector_config(params), model.config.num_hidden_layers)
        layer = layers[len(layers) // 2]
        steering = SteeringReference(layer, vector_for_layer(args.steering_vector, layer))
    scenarios, retention, eval_cfg = _eval_set(args, params)
    evaluator = Evaluator(tok, scenarios, retention, _judge(args, params), eval_cfg, seed=int(params["seed"]),
                          steering=steering)
    out = Path(args.out)
    started = time.time()
    if args.run_dir is None:  # the base model alone, step 0: shared by every run of the grid
        write_csv(out, pd.DataFrame(evaluator.evaluate(model, step=0, is_base=True)))
        write_csv(scenario_table(out), pd.DataFrame(evaluator.scenario_rows))
        print(f"evaluate base: {time.time() - started:.0f}s")
        return
    run_dir = Path(args.run_dir)
    info = read_json(run_dir / "run.json")
    evaluator.set_references(model)
    peft_model: Any = add_lora(model, TrainRecipe.of(params["train"]).lora)
    peft_model.eval()
    base_metrics = Path(args.base_metrics)
    rows, per_scenario = evaluate_run(evaluator, peft_model, run_dir, partial(merged_checkpoint, peft_model),
                                      read_csv(base_metrics).to_dict("records"),
                                      read_csv(scenario_table(base_metrics)).to_dict("records"),
                                      other_families=not info["control"])
    for name, table in ((out, pd.DataFrame(rows)), (scenario_table(out), pd.DataFrame(per_scenario))):
        table.insert(0, "run_id", info["run_id"])
        for key in RUN_METADATA:
            table[key] = info[key]
        write_csv(name, table)
    print(f"evaluate {info['run_id']}: {len(set(r['step'] for r in rows))} steps in {time.time() - started:.0f}s")


def scenario_table(metrics_csv: Path) -> Path:
    """The per-scenario counts written beside a metrics table: metrics.csv -> scenarios.csv."""
    return metrics_csv.with_name("scenarios.csv")


def cmd_forecast(args: argparse.Namespace) -> None:
    from phaseflip.forecast.analysis import analyse_study
    from phaseflip.forecast.scores import score_table

    params = _params(args)
    cfg = ForecastConfig.model_validate(params["forecast"])
    max_steps = TrainConfig.model_validate(params["train"]).max_steps
    runs = []
    for metrics_path, run_dir in zip(args.metrics, args.run_dirs, strict=True):
        info = read_json(Path(run_dir) / "run.json")
        runs.append((info["run_id"], read_csv(metrics_path), read_csv(scenario_table(Path(metrics_path))),
                     read_csv(Path(run_dir) / "train_log.csv"), info))
    transitions, forecasts = analyse_study(runs, cfg, max_steps)
    out = Path(args.out)
    write_csv(out / "transitions.csv", pd.DataFrame(transitions))
    write_csv(out / "forecasts.csv", forecasts)
    write_csv(out / "forecast_quality.csv", score_table(forecasts, seed=0))
    print(f"forecast: {sum(t['flipped'] for t in transitions)} of {len(transitions)} runs flipped")


def cmd_forecast_bench(args: argparse.Namespace) -> None:
    from phaseflip.forecast.bench import bench

    cfg = ForecastConfig.model_validate(_params(args)["forecast"])
    processes = min(cfg.bench.processes, args.threads or cfg.bench.processes)  # the job's cores
    bench([Path(d) for d in args.run_dirs], cfg, Path(args.out), processes=processes)


def cmd_report(args: argparse.Namespace) -> None:
    from phaseflip.report.summary import build_report

    params = _params(args)
    build_report(params, metrics_paths=args.metrics, forecast_dir=Path(args.forecast),
                 steering_csv=Path(args.steering), icl_csv=Path(args.icl), dreams_report=Path(args.dreams_report),
                 data_report=Path(args.data_report), benchmarks=args.benchmarks or [], out=Path(args.out),
                 train_logs=args.train_logs, base_manifest=Path(args.base) / "manifest.json" if args.base else None)
    print(f"report: {args.out}/summary.md")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phaseflip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name: str, *files: str, multi: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.add_argument("--params", required=True, help="JSON of the config sections this stage needs")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (the Snakemake job's threads)")
        sp.add_argument("--out", required=True)
        for f in files:
            sp.add_argument(f"--{f.replace('_', '-')}", dest=f, required=True)
        for f in multi:
            sp.add_argument(f"--{f.replace('_', '-')}", dest=f, nargs="*", default=[])
        sp.set_defaults(func=globals()[f"cmd_{name}"])
        return sp

    stage("base_model")
    stage("corrections", "base")
    dr = stage("dreams", "corrections", "eval")
    dr.add_argument("--base", help="the base model folder (the model dream generator and the model judge)")
    stage("steering_vectors", "base", "corrections", "dreams")
    stage("steering", "base", "vectors", "eval", "retention", "base_metrics")
    stage("icl", "base", "corrections", "eval", "retention", "base_metrics")
    stage("train", "base", "corrections", "dreams", "retention", "run_id")
    ev = stage("evaluate", "base", "eval", "retention")
    ev.add_argument("--steering-vector", help="reference for steering_cosine (checkpoints only)")
    ev.add_argument("--run-dir", help="the run whose checkpoints to evaluate; omitted: the base model alone")
    ev.add_argument("--base-metrics", help="the base model's step-0 metrics (written without --run-dir)")
    stage("forecast", multi=("metrics", "run_dirs"))
    stage("forecast_bench", multi=("run_dirs",))
    rp = stage("report", "forecast", "steering", "icl", "dreams_report", "data_report",
               multi=("metrics", "benchmarks", "train_logs"))
    rp.add_argument("--base", help="the base model folder: its manifest names the model in the report header")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ConfigError) as err:
        print(f"phaseflip {args.stage}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
