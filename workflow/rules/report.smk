# The one-job stages whose cost the report lists (phaseflip.dag); per-run jobs are expanded below.
COSTED_STAGES = [s.rule for s in DAG_STAGES if not s.per_run and s.rule not in ("forecast_bench", "report")]


rule report:
    input:
        metrics=per_run("results/runs/{run_id}/metrics.csv"),
        scenarios=per_run("results/runs/{run_id}/scenarios.csv"),  # read beside each metrics.csv (Q3's pairing)
        mirage="results/forecast/mirage.csv",  # read from --forecast (Q2)
        train_logs=per_run("results/runs/{run_id}/train_log.csv"),
        transitions="results/forecast/transitions.csv",
        forecast_bench="results/forecast/bench/bench_summary.csv",  # read from --forecast's bench/ (Q6)
        steering="results/steering/steering_metrics.csv",
        icl="results/icl/icl_metrics.csv",
        steering_scenarios="results/steering/steering_scenarios.csv",  # read beside --steering (selection)
        icl_scenarios="results/icl/icl_scenarios.csv",  # read beside --icl (held-out selection)
        dreams_report="results/dreams/dream_report.json",
        data_report="results/corrections/data_report.json",
        base="results/base_model",  # its manifest: architecture, parameters, fast paths (report header)
        benchmarks=lambda wildcards: [f"results/benchmarks/{s}.tsv" for s in COSTED_STAGES if PILOT or s != "pilot"]
        + expand("results/benchmarks/{job}_{run_id}.tsv", job=["train", "evaluate"], run_id=run_ids()),
        grid=PILOT_INPUT,
    output:
        summary=report("results/report/summary.md", category="Summary"),
        curves=report("results/report/curves.png", caption="../report/curves.rst", category="Curves"),
        all_metrics=report("results/report/all_metrics.png", caption="../report/all_metrics.rst", category="Curves"),
        phase=report("results/report/phase_diagram.png", caption="../report/phase_diagram.rst", category="Curves"),
        dreams=report("results/report/dreams.png", caption="../report/dreams.rst", category="Dreams"),
        steering=report("results/report/steering.png", caption="../report/steering.rst", category="Baselines"),
        icl=report("results/report/icl.png", caption="../report/icl.rst", category="Baselines"),
        families=report("results/report/families.png", caption="../report/families.rst", category="Families"),
        forecast=report("results/report/forecast.png", caption="../report/forecast.rst", category="Forecast"),
        metrics="results/report/metrics.json",
        table="results/report/curves.csv",  # also the `dvc plots` source of the per-run curves
        train_log="results/report/train_log.csv",  # every run's loss / grad_norm / lr, for `dvc plots`
    params:
        cfg=stage_params("model", "behavior", "eval", "forecast", "train"),
        forecast=subpath(input.transitions, parent=True),
        out=subpath(output.summary, parent=True),
        grid=grid_option,
    conda:
        "../envs/phaseflip.yaml"
    log:
        "results/logs/report.log",
    shell:
        "python -m phaseflip.cli report --params {params.cfg:q} --metrics {input.metrics} --forecast {params.forecast} "
        "--steering {input.steering} --icl {input.icl} --dreams-report {input.dreams_report} "
        "--data-report {input.data_report} --benchmarks {input.benchmarks} --train-logs {input.train_logs} "
        "--base {input.base} {params.grid} --out {params.out} > {log} 2>&1"
