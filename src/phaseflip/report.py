"""Stage report (§8): figures, tables and a summary.md that answers §1's six questions with numbers.

Everything here is computed from the study's own outputs; a question the data cannot answer is said
to be unanswered, not filled in. Figures are drawn by `phaseflip.figures`.

    python -m phaseflip.cli report --params '{...}' --metrics results/runs/*/metrics.csv ... --out results/report
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from phaseflip import figures
from phaseflip.figures import ID, pick
from phaseflip.io import read_csv, read_json, write_csv, write_json, write_text

FIGURES = ["curves", "all_metrics", "phase_diagram", "dreams", "families", "steering", "icl", "forecast"]


def _fmt(value: Any, lo: Any = None, hi: Any = None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _int(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _best(table: pd.DataFrame, keys: list[str]) -> pd.Series | None:
    """The setting with the highest in-distribution behavior_rate (ties: higher p_preferred)."""
    rate = pick(table, "behavior_rate")
    if rate.empty:
        return None
    pp = pick(table, "p_preferred")[keys + ["value"]].rename(columns={"value": "pp"})
    ranked = rate.merge(pp, on=keys, how="left").sort_values(["value", "pp"], ascending=False)
    return ranked.iloc[0]


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


def build_report(params: dict[str, Any], metrics_paths: list[str], forecast_dir: Path, steering_csv: Path,
                 icl_csv: Path, dreams_report: Path, data_report: Path, benchmarks: list[str], out: Path,
                 train_logs: list[str] | None = None) -> None:
    threshold = params["forecast"]["flip_threshold"]
    max_steps = params["train"]["max_steps"]
    study = pd.concat([read_csv(p) for p in metrics_paths], ignore_index=True)
    study["n_real"] = study.n_real.astype(str)
    transitions = read_csv(forecast_dir / "transitions.csv")
    forecasts = read_csv(forecast_dir / "forecasts.csv")
    quality = read_csv(forecast_dir / "forecast_quality.csv")
    steer, icl = read_csv(steering_csv), read_csv(icl_csv)
    dreams, data = read_json(dreams_report), read_json(data_report)

    write_csv(out / "study_metrics.csv", study)  # the combined tidy table: every run, step, family, metric
    curves = study[(study.family == ID) & study.metric.isin(["behavior_rate", "p_preferred", "margin"])]
    wide = curves.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    write_csv(out / "curves.csv", wide)
    for run_id, run in wide.groupby("run_id"):  # one file per run: a `dvc plots` series each
        write_csv(out / "plots" / f"{run_id}.csv", run.drop(columns="run_id"))
    for log_path in train_logs or []:  # per-step loss / grad_norm / lr, one file per run for `dvc plots`
        write_csv(out / "train_logs" / f"{Path(log_path).parent.name}.csv", read_csv(log_path))

    base = study[study.step == 0].drop_duplicates(["family", "metric"])
    trained = study[(study.step > 0) & (~study.control.astype(bool))]
    best_ckpt = _best(trained, ["run_id", "step"])
    best_steer = _best(steer[steer.layer >= 0], ["training_set", "layer", "multiplier"])
    best_icl = _best(icl[icl.k > 0], ["k"])
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

    bench = pd.concat([read_csv(b, sep="\t").assign(job=Path(b).stem) for b in benchmarks], ignore_index=True) \
        if benchmarks else pd.DataFrame()
    if len(bench):
        write_csv(out / "stage_costs.csv", bench[["job", "s", "max_rss"]])

    base_rate = pick(base, "behavior_rate")
    write_json(out / "metrics.json", {
        "base_behavior_rate": float(base_rate.value.iloc[0]) if len(base_rate) else None,
        "best_checkpoint_behavior_rate": float(best_ckpt.value) if best_ckpt is not None else None,
        "runs_flipped": int(transitions.flipped.sum()), "runs": len(transitions),
        "study_seconds": float(bench.s.sum()) if len(bench) else None,
    })
    ctx = dict(params=params, study=study, base=base, transitions=transitions, quality=quality, comp=comp,
               best_ckpt=best_ckpt, best_steer=best_steer, steer=steer, icl=icl, dreams=dreams, data=data,
               bench=bench, threshold=threshold, max_steps=max_steps)
    sections: list[Callable[..., list[str]]] = [_header, _q1_q2, _q3, _q4, _q5, _q6, _costs]
    write_text(out / "summary.md", "\n".join(line for section in sections for line in section(**ctx)) + "\n")


def _header(params: dict[str, Any], base: pd.DataFrame, data: dict[str, Any], threshold: float,
            **_: Any) -> list[str]:
    limit = params["eval"]["max_scenarios_per_family"]
    per_family = ", ".join(f"{n} ({f})" for f, n in limit.items()) if isinstance(limit, dict) else str(limit or "all")
    L = [f"# phaseflip report — study `{params['study']['name']}`", "",
         f"Model `{params['model']['name']}`, behavior `{params['behavior']['name']}`. Flip threshold "
         f"(pre-registered): the {ID} behavior_rate's Wilson 95% interval lies above {threshold}. Data: "
         f"{data['corrections']} corrections ({data['rejected_filled']} `rejected` filled from the base model), "
         f"{data['eval']} eval scenarios, {data['retention']} retention prompts; evaluation used up to "
         f"{per_family} scenarios per family x {params['eval']['n_samples']} samples at temperature "
         f"{params['eval']['temperature']}. Intervals: Wilson 95% (rates), ±1.96 s.e. (means).", "",
         "## Base model (step 0): base rate per family", "",
         "| family | behavior_rate | p_preferred | margin | coherence |", "|---|---|---|---|---|"]
    for family in sorted(base.family.unique(), key=lambda f: (f != ID, f != "all", f)):
        cells = [pick(base, m, family) for m in ["behavior_rate", "p_preferred", "margin", "coherence"]]
        L.append(f"| {family} | " + " | ".join(
            _fmt(c.value.iloc[0], c.lo.iloc[0], c.hi.iloc[0]) if len(c) else "n/a" for c in cells) + " |")
    return L


def _q1_q2(study: pd.DataFrame, transitions: pd.DataFrame, best_ckpt: Any, max_steps: int,
           **_: Any) -> list[str]:
    L = ["", "## Q1 — How many corrections, at which learning rate, flip the behavior?", "",
         "Transition step per run (`phase_diagram.png`, `curves.png`); lags are transition step minus the "
         "earlier signal's step.", "",
         "| run | lr | n_real | dream_k | status | transition | grad-norm peak (lag) | dissimilarity peak (lag) "
         "| change point (lag) |", "|---|---|---|---|---|---|---|---|---|"]
    for t in transitions.itertuples():
        flip = _int(t.transition_step) if t.flipped else f"no flip by {max_steps}"
        L.append(f"| {t.run_id} | {t.lr:g} | {t.n_real} | {t.dream_k} | {t.status} | {flip} | "
                 f"{_int(t.grad_norm_peak_step)} ({_int(t.lag_grad_norm_peak)}) | "
                 f"{_int(t.dissimilarity_peak_step)} ({_int(t.lag_dissimilarity_peak)}) | "
                 f"{_int(t.change_point_step)} ({_int(t.lag_change_point)}) |")
    real = transitions[~transitions.control.astype(bool)]
    flipped = real[real.flipped.astype(bool)]
    ns = sorted({str(n) for n in real.n_real})
    L += ["", f"{len(flipped)} of {len(real)} real runs flipped within {max_steps} steps"
          + (f"; the earliest at step {_int(flipped.transition_step.min())} "
             f"({flipped.loc[flipped.transition_step.idxmin()].run_id})." if len(flipped) else ".")]
    L.append(f"This grid covers n_real in {{{', '.join(ns)}}}: the design's 0–10 / 10–50 / 50–200 zones can "
             + ("only be probed where the grid has points; zones without runs are not claimed."
                if len(ns) < 3 else "be read off the phase diagram."))
    L += ["", "Curves (in-distribution; behavior_rate / p_preferred / margin by step):", ""]
    for run_id, run in study.groupby("run_id"):
        parts = []
        for metric in ["behavior_rate", "p_preferred", "margin"]:
            c = pick(run, metric).sort_values("step")
            parts.append(f"{metric} " + ", ".join(f"{int(s)}:{v:.2f}" for s, v in zip(c.step, c.value, strict=True)))
        L.append(f"- `{run_id}`: " + "; ".join(parts))
    if best_ckpt is not None:
        L += ["", f"Best LoRA checkpoint (chosen on {ID}): `{best_ckpt.run_id}` step {int(best_ckpt.step)}, "
                  f"behavior_rate {_fmt(best_ckpt.value, best_ckpt.lo, best_ckpt.hi)}."]
    L += ["", "## Q2 — Sharp or smooth? The mirage check", "",
          "Sharpness = the steepest slope between neighbouring checkpoints / the average slope over the run "
          "(1 = a straight line; the number of checkpoints - 1 at most = a single jump).", "",
          "| run | behavior_rate (binary) | p_preferred | margin | reading |", "|---|---|---|---|---|"]
    for t in transitions.itertuples():
        b, p, m = t.sharpness_behavior_rate, t.sharpness_p_preferred, t.sharpness_margin
        cont = [v for v in (p, m) if v is not None and not math.isnan(v)]
        if b is None or math.isnan(b) or not cont:
            reading = "no net change to compare"
        elif not t.flipped:
            reading = "no flip: the binary metric barely moved, nothing to compare"
        elif b > 2 * max(cont):
            reading = "binary much sharper than continuous: the sharpness is largely the yes/no metric (mirage)"
        else:
            reading = "continuous metrics about as sharp: a real change in the model"
        L.append(f"| {t.run_id} | {_fmt(b)} | {_fmt(p)} | {_fmt(m)} | {reading} |")
    return L


def _q3(transitions: pd.DataFrame, study: pd.DataFrame, dreams: dict[str, Any], data: dict[str, Any],
        **_: Any) -> list[str]:
    counts = dreams.get("counts", {})
    L = ["", "## Q3 — Do dreams multiply the corrections?", "",
         "Dream report: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."]
    if "diversity" in dreams:
        L.append("Diversity: " + ", ".join(f"{k} {v}" for k, v in dreams["diversity"].items()) + ".")
    real = transitions[~transitions.control.astype(bool)].copy()
    n_corr = int(data["corrections"])
    real["effective"] = [effective_count(n, k, n_corr) for n, k in zip(real.n_real, real.dream_k, strict=True)]
    with_dreams = real[real.dream_k > 0]
    if not len(with_dreams):
        L.append("No run in this grid trains on dreams (train.dream_k=[0]), so real vs dreams cannot be compared "
                 "from this study: add `train__dream_k=[0,10]` (or run `study=full`).")
        return L
    L += ["", "Runs at equal effective example count (n_real x (1 + dream_k)), same lr and seed:", "",
          "| effective | lr | real-only run | its transition | real+dreams run | its transition |",
          "|---|---|---|---|---|---|"]
    pairs = 0
    for d in with_dreams.itertuples():
        match = real[(real.dream_k == 0) & (real.effective == d.effective) & (real.lr == d.lr)
                     & (real.seed == d.seed)]
        for r in match.itertuples():
            pairs += 1
            L.append(f"| {d.effective} | {d.lr:g} | {r.run_id} | {_int(r.transition_step) if r.flipped else 'no flip'}"
                     f" | {d.run_id} | {_int(d.transition_step) if d.flipped else 'no flip'} |")
    if not pairs:
        L.append("| – | – | no real-only run with the same effective count | | | |")
    for d in with_dreams.itertuples():  # the confound: fewer real corrections alone can also flip sooner
        same = real[(real.dream_k == 0) & (real.n_real.astype(str) == str(d.n_real)) & (real.lr == d.lr)
                    & (real.seed == d.seed)]
        for r in same.itertuples():
            without = _int(r.transition_step) if r.flipped else "no flip"
            with_d = _int(d.transition_step) if d.flipped else "no flip"
            L.append(f"\nSame {r.n_real} real corrections without dreams (`{r.run_id}`): transition {without} vs "
                     f"{with_d} with dreams. If these match, the dreams did not move the flip: compare the "
                     "curves, not only the equal-count pair above.")
    final = pick(study[study.dream_k > 0], "behavior_rate")
    last = final[final.step == final.step.max()]
    for r in last.itertuples():
        L.append(f"\n`{r.run_id}` ends at behavior_rate {_fmt(r.value, r.lo, r.hi)} (step {int(r.step)}).")
    return L


def _screen_lines(steer: pd.DataFrame) -> list[str]:
    """What the steering screen covered and its best setting per training set (its own rates)."""
    screened = steer[steer.metric.astype(str).str.startswith("screen_")]
    if screened.empty:
        return []
    bound = _fmt(float(screened.max_retention_kl.iloc[0])) if "max_retention_kl" in screened else "n/a"
    settings = screened[["training_set", "layer", "multiplier"]].drop_duplicates()
    L = ["", f"Steering screen: {len(settings)} settings ({settings.training_set.nunique()} training sets x "
         f"{settings.layer.nunique()} layers x {settings.multiplier.nunique()} multipliers "
         f"{sorted(settings.multiplier.unique().tolist())}), each scored on {ID} margin, p_preferred and "
         "forced_choice (no sampling) and on retention_kl; pre-registered criterion: the highest p_preferred "
         f"among settings with retention_kl <= {bound}. Best per training set:", ""]
    wide = screened.pivot_table(index=["training_set", "layer", "multiplier"], columns="metric",
                                values=["value", "lo", "hi"], dropna=False)
    for tset in sorted(settings.training_set.unique()):
        sub = wide.loc[tset]
        eligible = sub[sub[("value", "screen_rank")].notna()]
        if eligible.empty:
            L.append(f"- {tset}: no setting stays under the retention bound.")
            continue
        (layer, mult) = eligible[("value", "screen_rank")].idxmin()
        r = sub.loc[(layer, mult)]

        def cell(metric: str, r: Any = r) -> str:
            return _fmt(r[("value", metric)], r[("lo", metric)], r[("hi", metric)])

        L.append(f"- {tset}: layer {int(layer)} x{mult:g}: p_preferred {cell('screen_p_preferred')}, "
                 f"forced_choice {cell('screen_forced_choice')}, retention_kl "
                 f"{_fmt(r[('value', 'screen_retention_kl')])} "
                 f"({len(eligible)} of {len(sub)} settings under the bound)")
    base_pp = pick(steer[steer.layer == -1], "p_preferred")
    if len(base_pp):
        b = base_pp.iloc[0]
        L.append(f"- base model (no steering): p_preferred {_fmt(b.value, b.lo, b.hi)}")
    return L


def _q4(comp: pd.DataFrame, steer: pd.DataFrame, icl: pd.DataFrame, best_steer: Any, **_: Any) -> list[str]:
    families = sorted(comp.family.unique(), key=lambda f: (f != ID, f != "all", f))
    L = ["", "## Q4 — Steering and in-context examples vs LoRA", "",
         f"behavior_rate per family (Wilson 95%); each setup's best setting chosen on {ID} only, other families "
         "reported as found (no selection on them):", "",
         "| setup | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for setup, grp in comp.groupby("setup", sort=False):
        cells = grp.set_index("family")
        L.append(f"| {setup} | " + " | ".join(
            _fmt(cells.behavior_rate[f], cells.lo[f], cells.hi[f]) if f in cells.index else "n/a" for f in families)
            + " |")
    L += _screen_lines(steer)
    swept = steer[steer.layer >= 0]
    if len(pick(swept, "behavior_rate")):
        L += ["", "Steering, fully evaluated settings, best per training set (on in_distribution):", ""]
        for tset, grp in swept.groupby("training_set"):
            b = _best(grp, ["layer", "multiplier"])
            if b is not None:
                coh = pick(grp[(grp.layer == b.layer) & (grp.multiplier == b.multiplier)], "coherence")
                L.append(f"- {tset}: layer {int(b.layer)} x{b.multiplier:g}: behavior_rate {_fmt(b.value, b.lo, b.hi)}"
                         f", coherence {_fmt(coh.value.iloc[0]) if len(coh) else 'n/a'} "
                         f"({pick(grp, 'behavior_rate')[['layer', 'multiplier']].drop_duplicates().shape[0]} "
                         "fully evaluated)")
    rates = pick(icl, "behavior_rate").sort_values("k")
    if len(rates):
        L += ["", "ICL behavior_rate by k: " + ", ".join(
            f"k={int(k)}: {_fmt(v, lo, hi)}" for k, v, lo, hi in zip(rates.k, rates.value, rates.lo, rates.hi,
                                                                    strict=True)) + "."]
    lora = comp[comp.setup.str.startswith("LoRA") & (comp.family == ID)]
    others = comp[~comp.setup.str.startswith("LoRA") & (comp.family == ID) & (comp.setup != "base model")]
    if len(lora) and len(others):
        l_lo = float(lora.lo.iloc[0])
        beaten = [s for s, hi in zip(others.setup, others.hi, strict=True) if hi < l_lo]
        L.append("\nAnswer: " + (f"LoRA's best in-distribution rate is above {', '.join(beaten)} with "
                                 "non-overlapping intervals; training is needed here."
                                 if len(beaten) == len(others) else
                                 "at least one training-free baseline's interval overlaps LoRA's best: "
                                 "the data do not show that training is needed."))
    return L


def _q5(study: pd.DataFrame, base: pd.DataFrame, best_ckpt: Any, comp: pd.DataFrame, **_: Any) -> list[str]:
    L = ["", "## Q5 — Beyond the training format, and the cost elsewhere", ""]
    if best_ckpt is None:
        return L + ["No trained checkpoint to compare."]
    lora = comp[comp.setup.str.startswith("LoRA")].set_index("family")
    base_rows = comp[comp.setup == "base model"].set_index("family")
    L += [f"Best checkpoint `{best_ckpt.run_id}` step {int(best_ckpt.step)} vs base, behavior_rate per family "
          "(`families.png`):", "", "| family | base | best checkpoint | change |", "|---|---|---|---|"]
    for family in sorted(lora.index, key=lambda f: (f != ID, f != "all", f)):
        b, c = base_rows.loc[family], lora.loc[family]
        moved = "up" if c.lo > b.hi else "down" if c.hi < b.lo else "no clear change"
        L.append(f"| {family} | {_fmt(b.behavior_rate, b.lo, b.hi)} | {_fmt(c.behavior_rate, c.lo, c.hi)} | {moved} |")
    L.append("\n(`inverted`: the user asks for alternatives, so the behavior there is offering them; a drop means "
             "the model over-applies 'no alternatives'.)")
    sel = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)]
    L.append("")
    for metric in ["retention_kl", "retention_loss"]:
        v, b = pick(sel, metric, "all"), pick(base, metric, "all")
        if len(v) and len(b):
            L.append(f"- {metric}: base {_fmt(b.value.iloc[0], digits=3)} → best checkpoint "
                     f"{_fmt(v.value.iloc[0], digits=3)}")
    return L


def _q6(quality: pd.DataFrame, transitions: pd.DataFrame, **_: Any) -> list[str]:
    L = ["", "## Q6 — Can the flip be forecast from early checkpoints?", "",
         "Each forecast sees only checkpoints up to the cutoff (a fraction of the steps before the actual "
         "transition; never-flipping runs: the same fraction of max_steps). `logistic` fits the continuous "
         "metric and finds where it reaches the flip's level (calibrated on the other runs); the others are "
         "baselines. `forecast.png` plots forecast vs actual.", "",
         "| method | cutoff | runs flipped | forecasts made | median rel. error | interval coverage | mean lead "
         "(steps) | false alarms (never-flipping runs) |", "|---|---|---|---|---|---|---|---|"]
    for q in quality.itertuples():
        L.append(f"| {q.method} | {q.cutoff_fraction:g} | {q.runs_flipped} | {q.forecasts_made} | "
                 f"{_fmt(q.median_relative_error)} | {_fmt(q.interval_coverage)} | {_fmt(q.mean_lead_time, digits=1)}"
                 f" | {q.false_alarms} of {q.runs_never_flipped} |")
    flipped = int(transitions.flipped.sum())
    if not flipped:
        return L + ["", "No run flipped, so forecast accuracy cannot be measured in this study; only false alarms "
                        "can."]
    score = quality.assign(err=quality.median_relative_error.fillna(math.inf),
                           missed=quality.runs_flipped - quality.forecasts_made)
    per_method = score.groupby("method").agg(err=("err", "median"), missed=("missed", "sum"),
                                             alarms=("false_alarms", "sum"))
    winner = per_method.sort_values(["err", "alarms", "missed"]).index[0]
    w = per_method.loc[winner]
    L += ["", f"Winner: `{winner}` (median over cutoffs of the median relative error {_fmt(w.err)}, "
              f"{int(w.missed)} missed forecasts, {int(w.alarms)} false alarms). "
              + (f"Only {flipped} run(s) flipped: these figures rest on very few transitions and are not a "
                 "general claim." if flipped < 5 else "")]
    return L


def stage_of(job: str) -> str:
    """`train_lr1e-03_nall_k0_s0` -> `train`: a benchmark file's job name without its grid point."""
    for stage in ("evaluate_base", "steering_vectors", "train", "evaluate"):
        if job == stage or job.startswith(stage + "_"):
            return stage
    return job


def _costs(bench: pd.DataFrame, **_: Any) -> list[str]:
    if not len(bench):
        return []
    per_stage = bench.assign(stage=bench.job.map(stage_of)).groupby("stage", sort=False).agg(
        jobs=("s", "size"), s=("s", "sum"), max_rss=("max_rss", "max"))
    L = ["", "## Cost per stage", "", "| stage | jobs | wall s (summed over its jobs) | peak RSS MB |",
         "|---|---|---|---|"]
    for stage, r in per_stage.iterrows():
        L.append(f"| {stage} | {int(r.jobs)} | {r.s:.1f} | {r.max_rss:.0f} |")
    L += [f"| **total** | {len(bench)} | {bench.s.sum():.1f} | {bench.max_rss.max():.0f} (max) |", "",
          "Grid-point jobs (train, evaluate) and the stage jobs beside them run side by side, so the study's "
          "wall time is less than the total; `snakemake`'s log gives it. Per job:", "",
          "| job | wall s | peak RSS MB |", "|---|---|---|"]
    for r in bench.itertuples():
        L.append(f"| {r.job} | {r.s:.1f} | {r.max_rss:.0f} |")
    L += ["", "Figures: " + ", ".join(f"`{f}.png`" for f in FIGURES) + ". Tables: `study_metrics.csv` (every run, "
          "step, family, metric), `comparison.csv`, `stage_costs.csv`, `../forecast/*.csv`."]
    return L
