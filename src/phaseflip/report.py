"""Stage report (§8): figures, tables and a summary.md that answers §1's questions with numbers.

Everything here is computed from the study's own outputs; a question the data cannot answer yet is
said to be unanswered, not filled in.

    python -m phaseflip.cli report --params '{...}' --metrics results/runs/*/metrics.csv ... --out results/report
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from phaseflip.io import atomic_path, read_csv, read_json, write_csv, write_json, write_text  # noqa: E402

ID = "in_distribution"


def _savefig(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt(value: Any, lo: Any = None, hi: Any = None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _pick(table: pd.DataFrame, metric: str, family: str = ID) -> pd.DataFrame:
    return table[(table.metric == metric) & (table.family == family)]


def curves_figure(study: pd.DataFrame, transitions: pd.DataFrame, forecasts: pd.DataFrame, threshold: float,
                  path: Path) -> None:
    metrics = ["behavior_rate", "p_preferred", "margin"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8))
    for run_id, run in study.groupby("run_id"):
        for ax, metric in zip(axes, metrics, strict=True):
            c = _pick(run, metric).sort_values("step")
            line = ax.plot(c.step, c.value, marker="o", ms=3, label=run_id)[0]
            if metric == "behavior_rate":
                ax.fill_between(c.step, c.lo, c.hi, color=line.get_color(), alpha=0.15)
            t = transitions[transitions.run_id == run_id]
            if len(t) and t.flipped.iloc[0]:
                ax.axvline(t.transition_step.iloc[0], color=line.get_color(), ls="--", lw=1)
            fc = forecasts[(forecasts.run_id == run_id) & (forecasts.method == "logistic")
                           & (forecasts.cutoff_fraction == 0.5) & forecasts.predicted.notna()]
            if metric == "behavior_rate" and len(fc):
                ax.plot(fc.predicted, [threshold] * len(fc), marker="x", ms=9, color=line.get_color(), ls="none")
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel("training step")
        ax.set_title(f"{metric} ({ID})")
    axes[0].axhline(threshold, color="grey", lw=0.8)
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7)
    fig.suptitle("Dashed: transition (interval above threshold). x: forecast from the first 50% of steps.")
    _savefig(fig, path)


def steering_figure(steer: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    base = steer[steer.layer == -1]
    for ax, metric in zip(axes, ["behavior_rate", "coherence"], strict=True):
        b = _pick(base, metric)
        for layer, grp in steer[steer.layer >= 0].groupby("layer"):
            c = pd.concat([_pick(grp, metric), b.assign(multiplier=0.0)]).sort_values("multiplier")
            ax.plot(c.multiplier, c.value, marker="o", label=f"layer {layer}")
        ax.set_xlabel("multiplier")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"steering: {metric} ({ID})")
    axes[0].legend(fontsize=7)
    _savefig(fig, path)


def icl_figure(icl: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for metric in ["behavior_rate", "p_preferred", "forced_choice", "coherence"]:
        c = _pick(icl, metric).sort_values("k")
        ax.plot(c.k, c.value, marker="o", label=metric)
    ax.set_xlabel("k real corrections in context")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"ICL baseline ({ID})")
    ax.legend(fontsize=7)
    _savefig(fig, path)


def family_figure(comparison: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.8))
    families = sorted(comparison.family.unique())
    setups = list(comparison.setup.unique())
    width = 0.8 / max(1, len(setups))
    for i, setup in enumerate(setups):
        c = comparison[comparison.setup == setup].set_index("family").reindex(families)
        err = [(c.behavior_rate - c.lo).clip(lower=0), (c.hi - c.behavior_rate).clip(lower=0)]
        ax.bar([j + i * width for j in range(len(families))], c.behavior_rate, width, yerr=err, capsize=2,
               label=setup)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(families))], families, rotation=20)
    ax.set_ylabel("behavior_rate (Wilson 95%)")
    ax.set_ylim(0, 1.02)
    ax.set_title("behavior_rate per eval family")
    ax.legend(fontsize=7)
    _savefig(fig, path)


def _best(table: pd.DataFrame, keys: list[str]) -> pd.Series | None:
    """The setting with the highest in-distribution behavior_rate (ties: higher p_preferred)."""
    rate = _pick(table, "behavior_rate")
    if rate.empty:
        return None
    pp = _pick(table, "p_preferred")[keys + ["value"]].rename(columns={"value": "pp"})
    ranked = rate.merge(pp, on=keys, how="left").sort_values(["value", "pp"], ascending=False)
    return ranked.iloc[0]


def _family_rows(table: pd.DataFrame, setup: str) -> list[dict[str, Any]]:
    rows = []
    for family, grp in table[table.metric == "behavior_rate"].groupby("family"):
        r = grp.iloc[0]
        rows.append({"setup": setup, "family": family, "behavior_rate": r.value, "lo": r.lo, "hi": r.hi})
    return rows


def build_report(params: dict[str, Any], metrics_paths: list[str], forecast_dir: Path, steering_csv: Path,
                 icl_csv: Path, dreams_report: Path, data_report: Path, benchmarks: list[str], out: Path) -> None:
    threshold = params["forecast"]["flip_threshold"]
    study = pd.concat([read_csv(p) for p in metrics_paths], ignore_index=True)
    transitions = read_csv(forecast_dir / "transitions.csv")
    forecasts = read_csv(forecast_dir / "forecasts.csv")
    quality = read_csv(forecast_dir / "forecast_quality.csv")
    steer, icl = read_csv(steering_csv), read_csv(icl_csv)
    dreams, data = read_json(dreams_report), read_json(data_report)

    write_csv(out / "study_metrics.csv", study)
    curves = study[(study.family == ID) & study.metric.isin(["behavior_rate", "p_preferred", "margin"])]
    wide = curves.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    write_csv(out / "curves.csv", wide)
    for run_id, run in wide.groupby("run_id"):  # one file per run: a `dvc plots` series each
        write_csv(out / "plots" / f"{run_id}.csv", run.drop(columns="run_id"))
    curves_figure(study, transitions, forecasts, threshold, out / "curves.png")
    steering_figure(steer, out / "steering.png")
    icl_figure(icl, out / "icl.png")

    base = study[study.step == 0].drop_duplicates(["family", "metric"])
    trained = study[(study.step > 0) & (~study.control.astype(bool))]
    best_ckpt = _best(trained, ["run_id", "step"])
    best_steer = _best(steer[steer.layer >= 0], ["layer", "multiplier"])
    best_icl = _best(icl, ["k"])
    comparison = _family_rows(base, "base model")
    if best_steer is not None:
        sel = steer[(steer.layer == best_steer.layer) & (steer.multiplier == best_steer.multiplier)]
        comparison += _family_rows(sel, f"steering L{int(best_steer.layer)} x{best_steer.multiplier:g}")
    if best_icl is not None:
        comparison += _family_rows(icl[icl.k == best_icl.k], f"ICL k={int(best_icl.k)}")
    if best_ckpt is not None:
        sel = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)]
        comparison += _family_rows(sel, f"LoRA {best_ckpt.run_id} step {int(best_ckpt.step)}")
    comp = pd.DataFrame(comparison)
    write_csv(out / "comparison.csv", comp)
    family_figure(comp, out / "families.png")

    bench = pd.concat([read_csv(b, sep="\t").assign(job=Path(b).stem) for b in benchmarks], ignore_index=True) \
        if benchmarks else pd.DataFrame()
    if len(bench):
        write_csv(out / "stage_costs.csv", bench[["job", "s", "max_rss"]])

    base_rate = _pick(base, "behavior_rate")
    metrics_json = {
        "base_behavior_rate": float(base_rate.value.iloc[0]) if len(base_rate) else None,
        "best_checkpoint_behavior_rate": float(best_ckpt.value) if best_ckpt is not None else None,
        "runs_flipped": int(transitions.flipped.sum()), "runs": len(transitions),
    }
    write_json(out / "metrics.json", metrics_json)
    write_text(out / "summary.md", _summary(params, study, base, transitions, quality, comp, best_ckpt,
                                            best_steer, best_icl, icl, dreams, data, bench, threshold))


def _summary(params: dict[str, Any], study: pd.DataFrame, base: pd.DataFrame, transitions: pd.DataFrame,
             quality: pd.DataFrame, comp: pd.DataFrame, best_ckpt: Any, best_steer: Any, best_icl: Any,
             icl: pd.DataFrame, dreams: dict[str, Any], data: dict[str, Any], bench: pd.DataFrame,
             threshold: float) -> str:
    L = [f"# phaseflip report — study `{params['study']['name']}`", "",
         f"Model `{params['model']['name']}`, behavior `{params['behavior']['name']}`. "
         f"Flip threshold (pre-registered): behavior_rate interval above {threshold}. "
         f"Data: {data['corrections']} corrections ({data['rejected_filled']} `rejected` filled from the base "
         f"model), {data['eval']} eval scenarios, {data['retention']} retention prompts; evaluation used up to "
         f"{_per_family(params['eval']['max_scenarios_per_family'])} scenarios per family x "
         f"{params['eval']['n_samples']} samples. Intervals are Wilson 95% (rates) or ±1.96 s.e. (means).", "",
         "## Base model (step 0) per family", "", "| family | behavior_rate | p_preferred | coherence |",
         "|---|---|---|---|"]
    for family in sorted(base.family.unique()):
        cell = {m: _pick(base, m, family) for m in ["behavior_rate", "p_preferred", "coherence"]}
        L.append(f"| {family} | " + " | ".join(
            _fmt(c.value.iloc[0], c.lo.iloc[0], c.hi.iloc[0]) if len(c) else "n/a" for c in cell.values()) + " |")

    L += ["", "## Q1/Q2 — Does the behavior flip, where, and how sharply?", "",
          "| run | lr | n_real | dream_k | status | transition step | grad-norm peak | dissimilarity peak "
          "| change point |", "|---|---|---|---|---|---|---|---|---|"]
    for t in transitions.itertuples():
        flip = int(t.transition_step) if t.flipped else "no flip"
        L.append(f"| {t.run_id} | {t.lr:g} | {t.n_real} | {t.dream_k} | {t.status} | {flip} | "
                 f"{_int(t.grad_norm_peak_step)} | {_int(t.dissimilarity_peak_step)} | {_int(t.change_point_step)} |")
    L += ["", "Behavior rate vs step (in-distribution), per run:", ""]
    for run_id, run in study.groupby("run_id"):
        c = _pick(run, "behavior_rate").sort_values("step")
        pp = _pick(run, "p_preferred").sort_values("step")
        L.append(f"- `{run_id}`: behavior_rate " + ", ".join(f"{int(s)}:{v:.2f}" for s, v in zip(c.step, c.value,
                 strict=True)) + "; p_preferred " + ", ".join(f"{int(s)}:{v:.2f}" for s, v in
                 zip(pp.step, pp.value, strict=True)))
    L += ["", "Mirage check: compare the binary `behavior_rate` curve with the continuous `p_preferred` and "
          "`margin` curves in `curves.png`; a step in the binary metric over a smooth continuous rise points "
          "to a threshold artifact rather than a sharp change in the model.", ""]
    if best_ckpt is not None:
        L.append(f"Best LoRA checkpoint (chosen on {ID}): `{best_ckpt.run_id}` step {int(best_ckpt.step)}, "
                 f"behavior_rate {_fmt(best_ckpt.value, best_ckpt.lo, best_ckpt.hi)}.")
    L += ["", "## Q3 — Dreams", "",
          f"Template dreams: {dreams['counts'].get('kept', 0)} kept of {dreams['counts'].get('generated', 0)} "
          f"generated (acceptance {dreams.get('acceptance_rate')}); dropped: "
          + (", ".join(f"{k[8:]} {v}" for k, v in dreams["counts"].items() if k.startswith("dropped_")) or "none")
          + f"; {dreams['diversity']['distinct_scenarios']} distinct vocabulary scenarios.", ""]
    dream_runs = transitions[(transitions.dream_k > 0) & ~transitions.control.astype(bool)]
    L.append("Runs with dreams in this study: " + (", ".join(dream_runs.run_id) if len(dream_runs) else
             "none — the grid has dream_k=[0] only, so real vs dream examples cannot be compared from this study "
             "(run the `full` preset or `--config train__dream_k=[0,10]`)."))
    families = sorted(comp.family.unique(), key=lambda f: (f != ID, f != "all", f))
    L += ["", "## Q4 — Steering and in-context examples vs LoRA", "",
          "behavior_rate per family (Wilson 95%); each setup's best setting chosen on in_distribution:", "",
          "| setup | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for setup, grp in comp.groupby("setup", sort=False):
        cells = grp.set_index("family")
        L.append(f"| {setup} | " + " | ".join(
            _fmt(cells.behavior_rate[f], cells.lo[f], cells.hi[f]) if f in cells.index else "n/a" for f in families)
            + " |")
    if best_icl is not None:
        rates = _pick(icl, "behavior_rate").sort_values("k")
        L.append("")
        L.append("ICL behavior_rate by k: " + ", ".join(f"k={int(k)}: {_fmt(v, lo, hi)}" for k, v, lo, hi in
                 zip(rates.k, rates.value, rates.lo, rates.hi, strict=True)) + ".")
    L += ["", "Settings were picked on the in-distribution family only; other families are reported as found.", "",
          "## Q5 — Generalization and cost elsewhere", ""]
    if best_ckpt is not None:
        sel = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)]
        for metric in ["retention_kl", "retention_loss"]:
            v, b = _pick(sel, metric, "all"), _pick(base, metric, "all")
            if len(v) and len(b):
                L.append(f"- {metric}: base {_fmt(b.value.iloc[0], digits=3)} → best checkpoint "
                         f"{_fmt(v.value.iloc[0], digits=3)}")
    L += ["", "## Q6 — Forecast", "", "| method | cutoff | runs flipped | forecasts made | median rel. error | "
          "coverage | false alarms (never-flipping runs) |", "|---|---|---|---|---|---|---|"]
    for q in quality.itertuples():
        L.append(f"| {q.method} | {q.cutoff_fraction:g} | {q.runs_flipped} | {q.forecasts_made} | "
                 f"{_fmt(q.median_relative_error)} | {_fmt(q.interval_coverage)} | {q.false_alarms} of "
                 f"{q.runs_never_flipped} |")
    if not transitions.flipped.any():
        L.append("\nNo run flipped, so forecast accuracy cannot be measured in this study; only false alarms can.")
    if len(bench):
        L += ["", "## Cost per stage", "", "| job | wall s | peak RSS MB |", "|---|---|---|"]
        for r in bench.itertuples():
            L.append(f"| {r.job} | {r.s:.1f} | {r.max_rss:.0f} |")
        L.append(f"| total | {bench.s.sum():.1f} | |")
    L += ["", "Figures: `curves.png`, `steering.png`, `icl.png`, `families.png`. Tables: `study_metrics.csv`, "
          "`comparison.csv`, `../forecast/*.csv`."]
    return "\n".join(L) + "\n"


def _per_family(limit: Any) -> str:
    if isinstance(limit, dict):
        return ", ".join(f"{n} ({family})" for family, n in limit.items())
    return "all" if limit is None else str(limit)


def _int(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))
