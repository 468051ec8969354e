rule steering:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        dreams="results/dreams/dreams.jsonl",
        eval="results/corrections/eval.jsonl",
        retention="results/corrections/retention.jsonl",
        base_metrics="results/base_eval/metrics.csv",
    output:
        vector="results/steering/vector.safetensors",
        metrics="results/steering/steering_metrics.csv",
    params:
        cfg=stage_params("model", "behavior", "steering", "eval"),
        out=subpath(output.vector, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/steering.log",
    benchmark:
        "results/benchmarks/steering.tsv"
    threads: 8  # capped at --cores; on a cluster, set-threads in workflow/profiles/slurm
    shell:
        "python -m phaseflip.cli steering --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --dreams {input.dreams} --eval {input.eval} "
        "--retention {input.retention} --base-metrics {input.base_metrics} --out {params.out} > {log} 2>&1"


rule icl:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        eval="results/corrections/eval.jsonl",
        retention="results/corrections/retention.jsonl",
        base_metrics="results/base_eval/metrics.csv",
    output:
        metrics="results/icl/icl_metrics.csv",
        shots="results/icl/icl_shots.json",
    params:
        cfg=stage_params("model", "behavior", "icl", "eval"),
        out=subpath(output.metrics, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/icl.log",
    benchmark:
        "results/benchmarks/icl.tsv"
    threads: 8  # capped at --cores; on a cluster, set-threads in workflow/profiles/slurm
    shell:
        "python -m phaseflip.cli icl --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --eval {input.eval} --retention {input.retention} "
        "--base-metrics {input.base_metrics} --out {params.out} > {log} 2>&1"
