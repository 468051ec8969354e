rule dreams:
    input:
        base="results/base_model",
        corrections="results/corrections/train.jsonl",
        eval="results/corrections/eval.jsonl",
        vocab=optional_data_file("dream_vocab"),  # only a behavior with a template vocabulary has one
    output:
        dreams="results/dreams/dreams.jsonl",
        report="results/dreams/dream_report.json",
    params:
        cfg=stage_params("model", "behavior", "dreams"),
        out=subpath(output.dreams, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/dreams.log",
    benchmark:
        "results/benchmarks/dreams.tsv"
    threads: STAGE_THREADS  # like the other stage jobs, so on 2 cores the next ready job runs beside it
    shell:
        "python -m phaseflip.cli dreams --params {params.cfg:q} --threads {threads} --base {input.base} "
        "--corrections {input.corrections} --eval {input.eval} --out {params.out} > {log} 2>&1"
