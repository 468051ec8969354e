rule train:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        dreams="results/dreams/dreams.jsonl",
        retention="results/corrections/retention.jsonl",
    output:
        log="results/runs/{run_id}/train_log.csv",
        info="results/runs/{run_id}/run.json",
    params:
        cfg=run_params("model", "train"),
        out=subpath(output.info, parent=True),
    wildcard_constraints:
        run_id="[A-Za-z0-9_.+-]+",
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/train/{run_id}.log",
    benchmark:
        "results/benchmarks/train_{run_id}.tsv"
    priority: 2  # the grid's chains (train -> evaluate) first; see common.smk
    threads: 1  # per grid point: --cores N runs N side by side (measured faster); --set-threads train=K
    shell:
        "python -m phaseflip.cli train --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --dreams {input.dreams} --retention {input.retention} "
        "--run-id {wildcards.run_id} "
        "--out {params.out} > {log} 2>&1"
