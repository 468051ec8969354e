"""Stage report: figures, tables and summary.md answering the six questions (`report.summary.build_report`).

    python -m phaseflip.cli report --params '{...}' --metrics results/runs/*/metrics.csv ... --out results/report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phaseflip.report.summary import build_report


def run(params: dict[str, Any], out: str, forecast: str, steering: str, icl: str, dreams_report: str,
        data_report: str, metrics: list[str], benchmarks: list[str], train_logs: list[str],
        base: str | None = None, grid: str | None = None) -> None:
    build_report(params, metrics_paths=metrics, forecast_dir=Path(forecast), steering_csv=Path(steering),
                 icl_csv=Path(icl), dreams_report=Path(dreams_report), data_report=Path(data_report),
                 benchmarks=benchmarks or [], out=Path(out), train_logs=train_logs,
                 base_manifest=Path(base) / "manifest.json" if base else None,
                 grid=Path(grid) if grid else None)
    print(f"report: {out}/summary.md")
