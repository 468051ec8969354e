rule forecast:
    input:
        metrics=expand("results/runs/{run_id}/metrics.csv", run_id=RUN_IDS),
        scenarios=expand("results/runs/{run_id}/scenarios.csv", run_id=RUN_IDS),  # read beside metrics.csv
        info=expand("results/runs/{run_id}/run.json", run_id=RUN_IDS),
    output:
        transitions="results/forecast/transitions.csv",
        forecasts="results/forecast/forecasts.csv",
        quality="results/forecast/forecast_quality.csv",
    params:
        cfg=stage_params("train", "forecast"),
        run_dirs=[f"results/runs/{r}" for r in RUN_IDS],
        out=subpath(output.transitions, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/forecast.log",
    benchmark:
        "results/benchmarks/forecast.tsv"
    shell:
        "python -m phaseflip.cli forecast --params {params.cfg:q} --metrics {input.metrics} --run-dirs {params.run_dirs} "
        "--out {params.out} > {log} 2>&1"
