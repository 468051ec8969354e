"""The study's stages, in one table: each Snakemake rule, the stage module it runs, its arguments, what it writes.

Everything else that lists the stages reads this table or is checked against it by a test: the command
line (`phaseflip.cli`), which rule wrote a results/ path (`io.writer_of`, for error hints), the report's
cost table (`report.smk`, `rule_of_job`), the workflow's rules (`tests/test_dag.py`), the
README's stage table and the SLURM profile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    rule: str  # the Snakemake rule, and the name of its log and benchmark files
    command: str  # `python -m phaseflip.cli <command>` runs `phaseflip.stages.<command>.run`
    writes: tuple[str, ...]  # what it writes under results/ (a trailing "/" for a whole folder)
    files: tuple[str, ...] = ()  # required file arguments (`--base`, ...)
    lists: tuple[str, ...] = ()  # arguments that take several files
    options: tuple[tuple[str, str], ...] = ()  # optional file arguments and their help
    per_run: bool = False  # one job per run of the grid (its job names carry the run id)
    summary: str = ""

    @property
    def module(self) -> str:
        return f"phaseflip.stages.{self.command}"


# evaluate_base and evaluate run the same command: the base model alone, or one run's checkpoints.
EVALUATE_OPTIONS = (("steering_vector", "reference for steering_cosine (checkpoints only)"),
                    ("grid", "the pilot's grid.json: under checkpoint_steps auto, which checkpoints to evaluate"),
                    ("run_dir", "the run whose checkpoints to evaluate; omitted: the base model alone"),
                    ("base_metrics", "the base model's step-0 metrics (written without --run-dir)"))

STAGES: tuple[Stage, ...] = (
    Stage("base_model", "base_model", ("base_model/",),
          summary="the model under study as a Hugging Face folder with a manifest"),
    Stage("corrections", "corrections", ("corrections/",), files=("base",),
          summary="validated splits; missing `rejected` replies and reference pairs made by the base model"),
    Stage("dreams", "dreams", ("dreams/",), files=("corrections", "eval"),
          options=(("base", "the base model folder (the model dream generator and the model judge)"),),
          summary="K variations of each real correction, with provenance"),
    Stage("steering_vectors", "steering_vectors", ("steering/*.safetensors",), files=("base", "corrections", "dreams"),
          summary="one contrastive steering vector per training set, every layer"),
    Stage("steering", "steering", ("steering/",), files=("base", "vectors", "eval", "retention", "base_metrics"),
          summary="the steering screen over layers and multipliers, then the full evaluation of the best"),
    Stage("icl", "icl", ("icl/",), files=("base", "corrections", "eval", "retention", "base_metrics"),
          summary="k real corrections in context, scored like a checkpoint"),
    Stage("pilot", "pilot", ("pilot/",), files=("base", "corrections", "eval"),
          summary="probe runs that choose the grid's lrs and checkpoints (train.lrs / checkpoint_steps: auto)"),
    Stage("evaluate_base", "evaluate", ("base_eval/",), files=("base", "eval", "retention"),
          options=EVALUATE_OPTIONS,
          summary="the base model: step 0 of every run, multiplier 0 and k=0 of the baselines"),
    Stage("train", "train", ("runs/",), files=("base", "corrections", "dreams", "retention", "run_id"), per_run=True,
          summary="one LoRA run of the grid, with adapter checkpoints"),
    Stage("evaluate", "evaluate", ("runs/*/metrics.csv", "runs/*/scenarios.csv"), files=("base", "eval", "retention"),
          options=EVALUATE_OPTIONS,
          per_run=True, summary="the order parameters at every checkpoint of one run"),
    Stage("forecast", "forecast", ("forecast/",), lists=("run_dirs",),
          summary="each run's t50, and forecasts of it from every checkpoint"),
    Stage("forecast_bench", "forecast_bench", ("forecast/bench/",), lists=("run_dirs",),
          summary="the forecast methods scored on runs simulated from the study"),
    Stage("report", "report", ("report/",), files=("forecast", "steering", "icl", "dreams_report", "data_report"),
          lists=("metrics", "benchmarks", "train_logs"),
          options=(("base", "the base model folder: its manifest names the model in the report header"),
                   ("grid", "the pilot's grid.json (when the pilot ran): its choice and predictions")),
          summary="figures, tables and summary.md answering the six questions"),
)

RULES: tuple[str, ...] = tuple(s.rule for s in STAGES)
COMMANDS: dict[str, Stage] = {s.command: s for s in STAGES}  # evaluate_base and evaluate share `evaluate`


def rule_of_job(job: str) -> str:
    """`train_lr1e-03_nall_k0_s0` -> `train`: a benchmark file's job name without its grid point."""
    for rule in sorted(RULES, key=len, reverse=True):  # the longest first: evaluate_base before evaluate
        if job == rule or job.startswith(rule + "_"):
            return rule
    return job


def writers() -> list[tuple[str, str]]:
    """(results/ path pattern, rule) pairs, the most specific pattern first."""
    pairs = [(pattern, s.rule) for s in STAGES for pattern in s.writes]
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)
