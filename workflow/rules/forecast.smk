rule forecast:
    input:
        metrics=per_run("results/runs/{run_id}/metrics.csv"),  # each run folder, read by --run-dirs
        scenarios=per_run("results/runs/{run_id}/scenarios.csv"),
        info=per_run("results/runs/{run_id}/run.json"),
    output:
        transitions="results/forecast/transitions.csv",
        forecasts="results/forecast/forecasts.csv",
        quality="results/forecast/forecast_quality.csv",
        mirage="results/forecast/mirage.csv",
    params:
        cfg=stage_params("train", "forecast"),
        run_dirs=lambda wildcards: [f"results/runs/{r}" for r in run_ids()],
        out=subpath(output.transitions, parent=True),
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/forecast.log",
    benchmark:
        "results/benchmarks/forecast.tsv"
    shell:
        "python -m phaseflip.cli forecast --params {params.cfg:q} --run-dirs {params.run_dirs} "
        "--out {params.out} > {log} 2>&1"


rule forecast_bench:
    # The forecasters scored where the truth is known: runs simulated from a model fitted to this study, one
    # set per pre-registered generator (conf/forecast/).
    input:
        transitions="results/forecast/transitions.csv",  # after the study's own forecast
        metrics=per_run("results/runs/{run_id}/metrics.csv"),
        scenarios=per_run("results/runs/{run_id}/scenarios.csv"),
        info=per_run("results/runs/{run_id}/run.json"),
    output:
        summary="results/forecast/bench/bench_summary.csv",
        quality="results/forecast/bench/bench_quality.csv",
        forecasts="results/forecast/bench/bench_forecasts.csv",
        calibration_table="results/forecast/bench/calibration.csv",
        model="results/forecast/bench/model.json",
        calibration=report("results/forecast/bench/calibration.png", caption="../report/calibration.rst",
                           category="Forecast"),
    params:
        cfg=stage_params("forecast"),
        run_dirs=lambda wildcards: [f"results/runs/{r}" for r in run_ids()],
        out=subpath(output.summary, parent=True),
    threads: CFG["forecast"]["bench"]["processes"]
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/forecast_bench.log",
    benchmark:
        "results/benchmarks/forecast_bench.tsv"
    shell:
        "python -m phaseflip.cli forecast_bench --params {params.cfg:q} --threads {threads} "
        "--run-dirs {params.run_dirs} --out {params.out} > {log} 2>&1"
