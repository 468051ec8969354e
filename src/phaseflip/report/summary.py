"""The report (docs/design.md §8): figures, tables and a summary.md that answers the six questions (§1) with
numbers.

Everything here is computed from the study's own outputs; a question the data cannot answer is said
to be unanswered, not filled in. Figures are drawn by `phaseflip.report.figures`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip.config import PilotConfig
from phaseflip.dag import rule_of_job
from phaseflip.data import IN_DISTRIBUTION
from phaseflip.forecast.analysis import behavior_counts
from phaseflip.io import read_csv, read_json, write_csv, write_json, write_text
from phaseflip.prepare import references
from phaseflip.report import answers, figures
from phaseflip.report.answers import best_setting, fmt
from phaseflip.report.figures import pick
from phaseflip.report.held_out import held_out_choices
from phaseflip.report.pilot_section import pilot_lines
from phaseflip.run_folder import scenario_table

FIGURES = ["curves", "all_metrics", "phase_diagram", "dreams", "families", "steering", "icl", "forecast"]


def _family_rows(table: pd.DataFrame, setup: str) -> list[dict[str, Any]]:
    rows = []
    for family, grp in table[table.metric == "behavior_rate"].groupby("family"):
        r = grp.iloc[0]
        rows.append({"setup": setup, "family": family, "behavior_rate": r.value, "lo": r.lo, "hi": r.hi})
    return rows


def effective_count(n_real: Any, dream_k: int, n_corrections: int) -> int:
    """Training examples of a run: n_real corrections plus dream_k dreams each."""
    n = n_corrections if str(n_real) == "all" else int(n_real)
    return n * (1 + int(dream_k))


def train_log_table(paths: list[str]) -> pd.DataFrame:
    """Every run's per-step loss / grad_norm / lr in one tidy table (run_id = the run's folder name)."""
    logs = [read_csv(p).assign(run_id=Path(p).parent.name) for p in paths]
    if not logs:
        return pd.DataFrame(columns=["run_id", "step", "loss", "grad_norm", "lr"])
    table = pd.concat(logs, ignore_index=True)
    # Sorted, so the file does not depend on the order Snakemake passes the logs in.
    table = table[["run_id", *[c for c in table.columns if c != "run_id"]]]
    return table.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def _numeric(table: pd.DataFrame, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """`table` with every column but `text_columns` as numbers (an empty CSV reads as text)."""
    if len(table):
        return table
    return table.astype({c: float for c in table.columns if c not in text_columns})


def _optional_csv(path: Path) -> pd.DataFrame | None:
    """A stage's side table, None where an older study did not write it (or wrote it empty)."""
    return read_csv(path) if path.exists() and path.stat().st_size else None


def build_report(params: dict[str, Any], metrics_paths: list[str], forecast_dir: Path, steering_csv: Path,
                 icl_csv: Path, dreams_report: Path, data_report: Path, benchmarks: list[str], out: Path,
                 train_logs: list[str] | None = None, base_manifest: Path | None = None,
                 grid: Path | None = None) -> None:
    threshold = params["forecast"]["flip_threshold"]
    max_steps = params["train"]["max_steps"]
    study = pd.concat([read_csv(p) for p in metrics_paths], ignore_index=True)
    study["n_real"] = study.n_real.astype(str)
    transitions = read_csv(forecast_dir / "transitions.csv")
    # numeric columns stay numeric when no run had an origin to forecast from (header-only files)
    forecasts = _numeric(read_csv(forecast_dir / "forecasts.csv"), ("method", "run_id", "configuration", "form",
                                                                     "reason"))
    quality = _numeric(read_csv(forecast_dir / "forecast_quality.csv"), ("method",))
    bench_csv = forecast_dir / "bench" / "bench_summary.csv"  # the forecast benchmark, when it ran
    bench_summary = read_csv(bench_csv) if bench_csv.exists() else None
    mirage_csv = forecast_dir / "mirage.csv"  # the mirage test per run and pooled (Q2)
    mirage = read_csv(mirage_csv) if mirage_csv.exists() else None
    # each run's in-distribution counts per scenario (scenarios.csv beside its metrics.csv): Q3's paired bootstrap
    counts = {}
    for p in metrics_paths:
        sc_path = scenario_table(Path(p))
        if sc_path.exists():
            sc = read_csv(sc_path)
            if len(sc):
                counts[Path(p).parent.name] = behavior_counts(sc)  # the run folder is named by run_id
    steer, icl = read_csv(steering_csv), read_csv(icl_csv)
    dreams, data = read_json(dreams_report), read_json(data_report)

    write_csv(out / "study_metrics.csv", study)  # the combined tidy table: every run, step, family, metric
    curves = study[(study.family == IN_DISTRIBUTION) & study.metric.isin(["behavior_rate", "p_preferred", "margin"])]
    wide = curves.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    # The `dvc plots` sources: one tidy file each, with a run_id column that dvc.yaml's template
    # (.dvc/plots/run_lines.json) draws one line per run from. DVC 3 rejects a folder as a plot source.
    write_csv(out / "curves.csv", wide)
    write_csv(out / "train_log.csv", train_log_table(train_logs or []))

    base = study[study.step == 0].drop_duplicates(["family", "metric"])
    trained = study[(study.step > 0) & (~study.control.astype(bool))]
    # Q5 compares families: the best checkpoint is chosen (on in-distribution) among those whose every
    # family was sampled (each run's last and, with eval.ood_at_best, its own best; see
    # measure.evaluator.evaluate_run).
    every_family = trained[(trained.metric == "behavior_rate") & (trained.family == "all")][["run_id", "step"]]
    best_ckpt = best_setting(trained.merge(every_family, on=["run_id", "step"]), ["run_id", "step"])
    best_steer = best_setting(steer[steer.layer >= 0], ["training_set", "layer", "multiplier"])
    best_icl = best_setting(icl[icl.k > 0], ["k"])
    # the same choices without the winner's curse: chosen on half the scenarios, read on the other (Q4, Q5)
    held_out = held_out_choices(counts, every_family, _optional_csv(steering_csv.with_name("steering_scenarios.csv")),
                                _optional_csv(icl_csv.with_name("icl_scenarios.csv")), int(params.get("seed") or 0))
    comparison = _family_rows(base, "base model")
    if best_steer is not None:
        sel = steer[(steer.training_set == best_steer.training_set) & (steer.layer == best_steer.layer)
                    & (steer.multiplier == best_steer.multiplier)]
        comparison += _family_rows(sel, f"steering {best_steer.training_set} L{int(best_steer.layer)} "
                                        f"x{best_steer.multiplier:g}")
    if best_icl is not None:
        comparison += _family_rows(icl[icl.k == best_icl.k], f"ICL k={int(best_icl.k)}")
    if best_ckpt is not None:
        sel = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)]
        comparison += _family_rows(sel, f"LoRA {best_ckpt.run_id} step {int(best_ckpt.step)}")
    comp = pd.DataFrame(comparison)
    write_csv(out / "comparison.csv", comp)

    figures.curves_figure(study, transitions, forecasts, threshold, out / "curves.png")
    figures.all_metrics_figure(study, out / "all_metrics.png")
    figures.phase_diagram(transitions, max_steps, out / "phase_diagram.png")
    figures.dreams_figure(study, out / "dreams.png")
    figures.families_figure(comp, out / "families.png")
    figures.steering_figure(steer, out / "steering.png")
    figures.icl_figure(icl, out / "icl.png")
    figures.forecast_figure(forecasts, max_steps, out / "forecast.png")

    stage_costs = pd.concat([read_csv(b, sep="\t").assign(job=Path(b).stem) for b in benchmarks],
                            ignore_index=True) \
        if benchmarks else pd.DataFrame()
    if len(stage_costs):
        write_csv(out / "stage_costs.csv", stage_costs[["job", "s", "max_rss"]])

    base_rate = pick(base, "behavior_rate")
    write_json(out / "metrics.json", {
        "base_behavior_rate": float(base_rate.value.iloc[0]) if len(base_rate) else None,
        "best_checkpoint_behavior_rate": float(best_ckpt.value) if best_ckpt is not None else None,
        "runs_flipped": int(transitions.flipped.sum()), "runs": len(transitions),
        "study_seconds": float(stage_costs.s.sum()) if len(stage_costs) else None,
        **{f"compute_{k}": v for k, v in (params.get("compute") or {}).items()},  # the resolved dtypes
    })
    screen_csv = steering_csv.with_name("steering_screen.csv")  # written with steering_metrics.csv
    model_line = model_summary(read_json(base_manifest) if base_manifest and base_manifest.exists() else None,
                               read_csv(screen_csv) if screen_csv.exists() and screen_csv.stat().st_size else None)
    ctx = dict(params=params, study=study, model_line=model_line, base=base, transitions=transitions, quality=quality,
               comp=comp, mirage=mirage, counts=counts, held_out=held_out,
               bench_summary=bench_summary, forecasts=forecasts,
               best_ckpt=best_ckpt, best_steer=best_steer, steer=steer, icl=icl, dreams=dreams, data=data,
               stage_costs=stage_costs, threshold=threshold, max_steps=max_steps, effective_count=effective_count,
               family_notes=params["behavior"].get("family_notes"),
               grid=read_json(grid) if grid else None,
               window=PilotConfig.model_validate(params["train"].get("pilot", {})).window)
    sections: list[Callable[..., list[str]]] = [_header, pilot_lines, answers.q1, answers.q2, answers.q3,
                                                answers.q4, answers.q5, answers.q6, _costs]
    write_text(out / "summary.md", "\n".join(line for section in sections for line in section(**ctx)) + "\n")


def model_summary(manifest: dict[str, Any] | None, screen: pd.DataFrame | None) -> str:
    """The header's model sentence: architecture, parameters, fast paths used or not (the compute dtype
    follows in `_compute_words`).

    From the base model manifest (`base_model.model_fast_paths`); the steering screen's own record
    (`screen_path` in steering_screen.csv) wins for `upper_blocks`, since its check runs on the model."""
    if not manifest:
        return ""
    paths = dict(manifest.get("fast_paths") or {})
    if screen is not None and "screen_path" in screen and len(screen):
        paths["upper_blocks"] = str(screen.screen_path.iloc[0])
    used = [p for p, why in paths.items() if why == "fast"]
    by_reason: dict[str, list[str]] = {}
    for path, why in paths.items():
        if why != "fast":
            by_reason.setdefault(why, []).append(path)
    generic = [f"{', '.join(names)} {why}" for why, names in by_reason.items()]
    line = (f"Architecture `{manifest.get('architecture')}` (model_type `{manifest.get('model_type', 'n/a')}`), "
            f"{manifest.get('n_parameters', 0):,} parameters.")
    if paths:
        line += (f" Fast paths used: {', '.join(used) or 'none'}; generic path: "
                 f"{'; '.join(generic) or 'none'}.")
    return line


def _header(params: dict[str, Any], base: pd.DataFrame, data: dict[str, Any], threshold: float,
            model_line: str = "", **_: Any) -> list[str]:
    limit = params["eval"]["max_scenarios_per_family"]
    per_family = ", ".join(f"{n} ({f})" for f, n in limit.items()) if isinstance(limit, dict) else str(limit or "all")
    ad = params["eval"]["adaptive"]
    L = [f"# phaseflip report — study `{params['study']['name']}`", "",
         f"Model `{params['model']['name']}`, behavior `{params['behavior']['name']}`. "
         + (f"{model_line} " if model_line else "") + f"{_compute_words(params)} Flip threshold "
         f"(pre-registered): {threshold} on the {IN_DISTRIBUTION} behavior_rate; the transition is `t50`, where the "
         f"fitted rate crosses it (Q1). Data: "
         f"{data['corrections']} corrections ({data['rejected_filled']} `rejected` filled from the base model), "
         f"{data['eval']} eval scenarios, {data['retention']} retention prompts; evaluation used up to "
         f"{per_family} scenarios per family. Sampling (temperature {params['eval']['temperature']}) is adaptive: "
         f"{params['eval']['n_samples']} replies per scenario, then {ad['samples_per_round']} more per round until "
         f"the {IN_DISTRIBUTION} rate's interval lies outside [{ad['band'][0]}, {ad['band'][1]}] "
         f"(at most {ad['max_samples']}); "
         "other families at the base model and each run's last and best checkpoint, until the half-width is at "
         f"most {ad['ood_half_width']} (at most {ad['ood_max_samples']}); `n` in the tables is the replies sampled. "
         "Intervals: 95%, clustered over scenarios for rates (replies to one scenario are correlated; Wilson at "
         "the design-effect sample size, `wilson_lo`/`wilson_hi` in the metric tables treat replies as "
         "independent), ±1.96 s.e. for means.", "",
         references.summary_line(data.get("references")), "",
         "## Base model (step 0): base rate per family", "",
         "| family | behavior_rate | p_preferred | margin | coherence |", "|---|---|---|---|---|"]
    for family in sorted(base.family.unique(), key=lambda f: (f != IN_DISTRIBUTION, f != "all", f)):
        cells = [pick(base, m, family) for m in ["behavior_rate", "p_preferred", "margin", "coherence"]]
        L.append(f"| {family} | " + " | ".join(
            fmt(c.value.iloc[0], c.lo.iloc[0], c.hi.iloc[0]) if len(c) else "n/a" for c in cells) + " |")
    return L


def _compute_words(params: dict[str, Any]) -> str:
    """The device and compute dtypes the study ran in: bfloat16 and float32 results differ (README)."""
    compute = params.get("compute")
    if not compute:
        return f"Compute dtype: `{params['model'].get('dtype', 'auto')}` (as configured; not resolved by Snakemake)."
    return (f"Computed on {compute['device']} in **{compute['model_dtype']}** (steering screen: "
            f"{compute['steering_screen_dtype']}; model.dtype `{params['model'].get('dtype', 'auto')}`: bfloat16 only "
            "where the device runs it natively).")


def _costs(stage_costs: pd.DataFrame, **_: Any) -> list[str]:
    if not len(stage_costs):
        return []
    per_stage = stage_costs.assign(stage=stage_costs.job.map(rule_of_job)).groupby("stage", sort=False).agg(
        jobs=("s", "size"), s=("s", "sum"), max_rss=("max_rss", "max"))
    L = ["", "## Cost per stage", "", "| stage | jobs | wall s (summed over its jobs) | peak RSS MB |",
         "|---|---|---|---|"]
    for stage, r in per_stage.iterrows():
        L.append(f"| {stage} | {int(r.jobs)} | {r.s:.1f} | {r.max_rss:.0f} |")
    L += [f"| **total** | {len(stage_costs)} | {stage_costs.s.sum():.1f} | {stage_costs.max_rss.max():.0f} (max) |", "",
          "Grid-point jobs (train, evaluate) and the stage jobs beside them run side by side, so the study's "
          "wall time is less than the total; `snakemake`'s log gives it. Per job:", "",
          "| job | wall s | peak RSS MB |", "|---|---|---|"]
    for r in stage_costs.itertuples():
        L.append(f"| {r.job} | {r.s:.1f} | {r.max_rss:.0f} |")
    L += ["", "Figures: " + ", ".join(f"`{f}.png`" for f in FIGURES) + ". Tables: `study_metrics.csv` (every run, "
          "step, family, metric), `comparison.csv`, `stage_costs.csv`, `../forecast/*.csv`."]
    return L
