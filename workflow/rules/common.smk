# Target logic: compose + validate the config once, before any job starts, and derive the run grid.
import json
import sys
from pathlib import Path

from phaseflip.config import ConfigError, choice_lines, load_study_config, resolve_dtypes, stage_sections
from phaseflip.dag import STAGES as DAG_STAGES
from phaseflip.interventions.pilot import read_grid
from phaseflip.interventions.steering import vector_file, vector_sets
from phaseflip.interventions.train import grid

# The compute dtypes (`auto` -> what this machine runs natively) are resolved here, once, said in the
# terminal, and part of every stage's params: another machine that resolves otherwise reruns them.
try:
    STUDY = load_study_config(config, root=Path(workflow.basedir))
    COMPUTE, DTYPE_LINES = resolve_dtypes(STUDY)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
print("\n".join(DTYPE_LINES + choice_lines(STUDY)), file=sys.stderr)

CFG = {**STUDY.model_dump(mode="json"), "compute": COMPUTE}
# Under train.lrs / checkpoint_steps auto the pilot (a checkpoint rule) decides the grid; else no pilot.
PILOT = STUDY.train.needs_pilot
PILOT_GRID = "results/pilot/grid.json"


def run_ids(wildcards=None):
    """The grid's run ids: from the config, or under `train.lrs: auto` from the pilot's grid.json (Snakemake
    re-evaluates the rules that ask once the pilot has run)."""
    if STUDY.train.lrs != "auto":
        return [spec.run_id for spec in grid(STUDY.train)]
    chosen = read_grid(checkpoints.pilot.get().output.grid)["lrs"]
    return [spec.run_id for spec in grid(STUDY.train, chosen)]


def per_run(pattern):
    """An input function: `pattern` ("results/runs/{run_id}/metrics.csv") for every run of the grid."""
    return lambda wildcards: expand(pattern, run_id=run_ids())


# The pilot's grid.json as an input of the jobs that read it (a list: empty when the pilot does not run),
# and the option that passes it.
PILOT_INPUT = [PILOT_GRID] if PILOT else []


def grid_option(wildcards, input):
    return f"--grid {input.grid}" if input.grid else ""


def stage_params(*sections, config=CFG):
    """The config sections a stage needs, as JSON: Snakemake reruns a job when its sections change.
    A section may be a subset ("steering.vector": the fields that define the vectors, not the screen's)."""
    keys = ("seed", "device", "study", "compute") + sections
    text = json.dumps(stage_sections(config, keys), sort_keys=True)
    # A function, not a string: Snakemake would read any "{name}" inside the JSON (e.g. a judge prompt
    # template) as a wildcard.
    return lambda wildcards: text


def data_file(kind):
    return CFG["behavior"]["data"][kind]


def optional_data_file(kind):
    """An optional behavior file as a list: empty when the behavior has none."""
    return [CFG["behavior"]["data"][kind]] if CFG["behavior"]["data"][kind] else []


def run_params(*sections):
    """Like stage_params, for one grid point's jobs (train, evaluate): the train section holds only the
    recipe, not the grid, so adding a grid point leaves every finished run's params, and the run, as is."""
    return stage_params(*sections, config={**CFG, "train": STUDY.train.recipe()})


# The stage jobs that run beside the grid (evaluate_base, steering_vectors, steering, icl): half the
# cores each, at most 8. On 2 cores that is 1 thread, so they pack beside the 1-thread train/evaluate
# jobs instead of waiting for both cores to be free (one thread is also the more efficient per core:
# evaluate_base took 37.6 s at 1 thread, 28.1 s at 2: 1.34x). On a cluster: set-threads in the profile.
# `corrections` is the one job nothing can run beside (every later stage reads its files): all cores, at
# most 8 (for a behavior without reference replies it writes them with the model: 237 s at 1 thread).
try:
    STAGE_THREADS = max(1, min(8, (workflow.cores or 2) // 2))
    ALONE_THREADS = max(1, min(8, workflow.cores or 2))
except WorkflowError:  # no --cores: commands that run no job (--report, --lint, --summary)
    STAGE_THREADS = ALONE_THREADS = 1
# Scheduling on a few cores (priority: in the rules): the short jobs every evaluate waits on
# (evaluate_base, steering_vectors) first, then the two baselines (the steering screen, the longest single
# job, and icl) as soon as they can run, so they overlap the grid's train -> evaluate chains instead of
# finishing alone: the grid's evaluations, all of similar length, end the schedule. (Measured on the default
# study, 2 cores: icl last ran alone for 12 min with a core idle, the forecast benchmark waiting for both.)
