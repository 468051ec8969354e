rule base_model:
    output:
        directory("results/base_model"),
    params:
        cfg=stage_params("model"),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/base_model.log",
    benchmark:
        "results/benchmarks/base_model.tsv"
    threads: 8  # capped at --cores: every later job waits on this one; on a cluster, set-threads in workflow/profiles/slurm
    shell:
        "python -m phaseflip.cli base_model --params {params.cfg:q} --threads {threads} --out {output} > {log} 2>&1"
