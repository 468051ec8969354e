rule evaluate:
    input:
        base="results/base_model",
        info="results/runs/{run_id}/run.json",
        eval="results/corrections/eval.jsonl",
        retention="results/corrections/retention.jsonl",
        vector="results/steering/vector.safetensors",
    output:
        "results/runs/{run_id}/metrics.csv",
    params:
        cfg=stage_params("model", "behavior", "train", "eval", "steering"),
        run_dir=subpath(input.info, parent=True),
    wildcard_constraints:
        run_id="[A-Za-z0-9_.+-]+",
    log:
        "results/logs/evaluate/{run_id}.log",
    benchmark:
        "results/benchmarks/evaluate_{run_id}.tsv"
    threads: workflow.cores
    shell:
        "{PF} evaluate --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--run-dir {params.run_dir} --eval {input.eval} --retention {input.retention} "
        "--steering-vector {input.vector} --out {output} > {log} 2>&1"
