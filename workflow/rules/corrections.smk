rule corrections:
    input:
        base="results/base_model",
        corrections=data_file("corrections"),
        eval=data_file("eval"),
        retention=data_file("retention"),
    output:
        train="results/corrections/train.jsonl",
        eval="results/corrections/eval.jsonl",
        retention="results/corrections/retention.jsonl",
        report="results/corrections/data_report.json",
    params:
        cfg=stage_params("model", "behavior"),
        out=subpath(output.train, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/corrections.log",
    benchmark:
        "results/benchmarks/corrections.tsv"
    threads: ALONE_THREADS  # every later job waits on it (see common.smk)
    shell:
        "python -m phaseflip.cli corrections --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--out {params.out} > {log} 2>&1"
