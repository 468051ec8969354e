EVALUATE_INPUTS = dict(
    base="results/base_model",
    eval="results/corrections/eval.jsonl",
    retention="results/corrections/retention.jsonl",
)


# The base model, step 0 of every run and multiplier 0 / k=0 of the baselines: evaluated once.
rule evaluate_base:
    input:
        **EVALUATE_INPUTS,
    output:
        metrics="results/base_eval/metrics.csv",
        scenarios="results/base_eval/scenarios.csv",  # per-scenario counts, written beside metrics.csv
    params:
        cfg=stage_params("model", "behavior", "eval"),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/evaluate/base.log",
    benchmark:
        "results/benchmarks/evaluate_base.tsv"
    priority: 3  # short, and every evaluate job waits on it (see common.smk)
    threads: STAGE_THREADS
    shell:
        "python -m phaseflip.cli evaluate --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--eval {input.eval} --retention {input.retention} --out {output.metrics} > {log} 2>&1"


rule evaluate:
    input:
        **EVALUATE_INPUTS,
        vector="results/steering/vector.safetensors",
        info="results/runs/{run_id}/run.json",
        base_metrics="results/base_eval/metrics.csv",
        base_scenarios="results/base_eval/scenarios.csv",
        grid=PILOT_INPUT,  # under checkpoint_steps auto: which checkpoints to evaluate
    output:
        metrics="results/runs/{run_id}/metrics.csv",
        scenarios="results/runs/{run_id}/scenarios.csv",  # per-scenario counts: the t50 bootstrap's input
    params:
        cfg=run_params("model", "behavior", "train", "eval", "steering.vector"),
        run_dir=subpath(input.info, parent=True),
        grid=grid_option,
    wildcard_constraints:
        run_id="[A-Za-z0-9_.+-]+",
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/evaluate/{run_id}.log",
    benchmark:
        "results/benchmarks/evaluate_{run_id}.tsv"
    priority: 1  # see common.smk
    threads: 1  # per grid point: --cores N runs N side by side (measured faster); --set-threads evaluate=K
    shell:
        "python -m phaseflip.cli evaluate --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--eval {input.eval} --retention {input.retention} --steering-vector {input.vector} "
        "--run-dir {params.run_dir} --base-metrics {input.base_metrics} {params.grid} --out {output.metrics} > {log} 2>&1"
