rule steering_vectors:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        dreams="results/dreams/dreams.jsonl",
    output:
        [f"results/steering/{vector_file(t)}" for t in vector_sets(STUDY.steering)],
    params:
        cfg=stage_params("model", "steering.vector"),
        out=subpath(output[0], parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/steering_vectors.log",
    benchmark:
        "results/benchmarks/steering_vectors.tsv"
    priority: 3  # short, and every evaluate job waits on it (see common.smk)
    threads: STAGE_THREADS
    shell:
        "python -m phaseflip.cli steering_vectors --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --dreams {input.dreams} --out {params.out} > {log} 2>&1"


rule steering:
    input:
        base="results/base_model",
        vectors=rules.steering_vectors.output,
        real_vector="results/steering/vector.safetensors",
        eval="results/corrections/eval.jsonl",
        retention="results/corrections/retention.jsonl",
        base_metrics="results/base_eval/metrics.csv",
    output:
        metrics="results/steering/steering_metrics.csv",
        screen="results/steering/steering_screen.csv",
        scenarios="results/steering/steering_scenarios.csv",  # per setting and scenario: held-out selection
    params:
        cfg=stage_params("model", "behavior", "steering", "eval"),
        vectors=subpath(input.real_vector, parent=True),
        out=subpath(output.metrics, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/steering.log",
    benchmark:
        "results/benchmarks/steering.tsv"
    threads: STAGE_THREADS
    priority: 4  # the longest single job: started as soon as it can run, beside the grid (see common.smk)
    shell:
        "python -m phaseflip.cli steering --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--vectors {params.vectors} --eval {input.eval} --retention {input.retention} "
        "--base-metrics {input.base_metrics} --out {params.out} > {log} 2>&1"


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
        scenarios="results/icl/icl_scenarios.csv",  # per k and scenario: the report's held-out selection
    params:
        cfg=stage_params("model", "behavior", "icl", "eval"),
        out=subpath(output.metrics, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/icl.log",
    benchmark:
        "results/benchmarks/icl.tsv"
    threads: STAGE_THREADS
    priority: 3  # beside the grid, not after it (see common.smk)
    shell:
        "python -m phaseflip.cli icl --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --eval {input.eval} --retention {input.retention} "
        "--base-metrics {input.base_metrics} --out {params.out} > {log} 2>&1"
