# The pilot (train.lrs: auto / train.checkpoint_steps: auto): probe runs decide the grid from data. A
# Snakemake checkpoint: the grid's run ids (and so the train/evaluate jobs) are known once it has run.
checkpoint pilot:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        eval="results/corrections/eval.jsonl",
    output:
        grid="results/pilot/grid.json",
        probes="results/pilot/probes.csv",
    params:
        cfg=stage_params("model", "behavior", "train.pilot", "eval", "forecast"),  # not the other grid points
        out=subpath(output.grid, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/pilot.log",
    benchmark:
        "results/benchmarks/pilot.tsv"
    priority: 4  # every run of the grid waits on it (see common.smk)
    threads: STAGE_THREADS
    shell:
        "python -m phaseflip.cli pilot --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --eval {input.eval} --out {params.out} > {log} 2>&1"
