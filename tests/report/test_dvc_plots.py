"""dvc.yaml's plot definitions render with the installed DVC 3 (issue #18), on small stand-in report files.

Fast: no study runs. The smoke study's own plots are checked end to end in test_reproducibility.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import yaml
from _project import copy_project

from phaseflip.io import write_csv
from phaseflip.report.summary import train_log_table

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["lr1e-03_nall_k0_s0", "lr3e-03_nall_k0_s0"]


def definitions() -> tuple[dict[str, dict], list[str]]:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    return ({next(iter(p)): next(iter(p.values())) for p in plots if isinstance(p, dict)},
            [p for p in plots if isinstance(p, str)])


def report_rule_outputs() -> set[str]:
    text = (ROOT / "workflow" / "rules" / "report.smk").read_text()
    return set(re.findall(r'"(results/report/[^"]+)"', text.split("output:")[1].split("params:")[0]))


def test_every_plot_source_is_a_file_the_report_rule_writes() -> None:
    """DVC 3 rejects folders as plot sources; each source must be one declared output of the report rule."""
    curves, images = definitions()
    outputs = report_rule_outputs()
    assert len(curves) == 5 and len(images) == 8
    for definition in curves.values():
        (source,) = definition["y"]
        assert source in outputs and Path(source).suffix == ".csv", source
        template = ROOT / ".dvc" / "plots" / f"{definition['template']}.json"
        spec = json.loads(template.read_text())
        assert spec["encoding"]["color"]["field"] == "run_id"  # one line per run, not one zigzag line
    assert set(images) <= outputs


def test_dvc_plots_show_renders_one_line_per_run(tmp_path: Path) -> None:
    project = copy_project(tmp_path, ["dvc.yaml", ".dvc", ".gitignore", ".dvcignore"])
    (project / ".dvc" / "config.local").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    report = project / "results" / "report"
    # Stand-ins with the columns report/summary.py writes: curves.csv (wide, per run and step) and train_log.csv.
    write_csv(report / "curves.csv", pd.DataFrame({
        "run_id": [r for r in RUNS for _ in range(3)], "step": [0, 2, 4] * 2,
        "behavior_rate": [0.0, 0.3, 0.9, 0.0, 0.6, 1.0], "margin": [0.1, 0.5, 2.0, 0.1, 1.0, 3.0],
        "p_preferred": [0.5, 0.6, 0.9, 0.5, 0.7, 0.95]}))
    logs = []
    for i, run_id in enumerate(RUNS):
        path = tmp_path / "runs" / run_id / "train_log.csv"
        write_csv(path, pd.DataFrame({"step": [1, 2], "loss": [3.0 - i, 2.0 - i], "grad_norm": [1.0, 0.5],
                                      "lr": 1e-3}))
        logs.append(str(path))
    write_csv(report / "train_log.csv", train_log_table(logs))
    _, images = definitions()
    for image in images:
        (project / image).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    proc = subprocess.run(["dvc", "plots", "show", "--json"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown["errors"]
    curves, images = definitions()
    for curve, definition in curves.items():
        (renderer,) = shown["data"][curve]
        (y,) = definition["y"].values()
        values = renderer["content"]["data"]["values"]
        assert {v["run_id"] for v in values if v.get(y) not in (None, "")} == set(RUNS), curve
    assert all(shown["data"][image][0]["type"] == "image" for image in images)

    html = subprocess.run(["dvc", "plots", "show", "-o", "out"], cwd=project, capture_output=True, text=True)
    assert html.returncode == 0 and "failed to load" not in (html.stdout + html.stderr).lower(), html.stderr
    page = (project / "out" / "index.html").read_text()
    titles = {json.loads(spec)["title"] for spec in re.findall(r"var spec = (\{.*\});", page)}
    assert titles == set(curves)
