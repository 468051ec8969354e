# phaseflip: the study as one DAG (README "The study"). Stage logic lives in src/phaseflip; rules only wire files.
#
#   snakemake --cores all                                  # the default study (SmolLM2-135M on CPU)
#   snakemake --cores all --config study=smoke             # a preset
#   snakemake --cores all --config train__lrs=[1e-4,1e-3]  # any Hydra override (`__` stands for `.`)
#   snakemake --cores all --configfile params.yaml         # a composed config (what `dvc repro` runs)

include: "workflow/rules/common.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/corrections.smk"
include: "workflow/rules/dreams.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/pilot.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/forecast.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report/summary.md",
    default_target: True
