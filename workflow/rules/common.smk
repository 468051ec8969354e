# Target logic: compose + validate the config once, before any job starts, and derive the run grid.
import json
from pathlib import Path

from phaseflip.config import ConfigError, load_study_config
from phaseflip.train import grid

try:
    STUDY = load_study_config(config, root=Path(workflow.basedir))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

CFG = STUDY.model_dump(mode="json")
RUN_IDS = [spec.run_id for spec in grid(STUDY.train)]


def stage_params(*sections, config=CFG):
    """The config sections a stage needs, as JSON: Snakemake reruns a job when its sections change."""
    keys = ("seed", "device", "study") + sections
    text = json.dumps({key: config[key] for key in keys}, sort_keys=True)
    # A function, not a string: Snakemake would read any "{name}" inside the JSON (e.g. a judge prompt
    # template) as a wildcard.
    return lambda wildcards: text


def data_file(kind):
    return CFG["behavior"]["data"][kind]


def run_params(*sections):
    """Like stage_params, for one grid point's jobs (train, evaluate): the train section holds only the
    recipe, not the grid, so adding a grid point leaves every finished run's params, and the run, as is."""
    return stage_params(*sections, config={**CFG, "train": STUDY.train.recipe()})
