"""The summary's six measured answers: Q1 (when does it flip), Q2 (sharp or smooth), Q3 (dreams), Q4 (steering
and ICL vs LoRA), Q5 (beyond the training format), Q6 (can it be forecast), each with its interval and, where a
question is not answered, what would answer it (design: docs/design.md §1, §8).

Every number comes from the study's outputs (`transitions.csv`, the metric tables); nothing here is
specific to one behavior. `report.summary.build_report` calls these with its context.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from phaseflip.config import EvalConfig, InferenceConfig
from phaseflip.data import IN_DISTRIBUTION
from phaseflip.report.figures import pick
from phaseflip.report.held_out import HeldOut
from phaseflip.report.held_out import label as held_out_label
from phaseflip.stats.differences import (
    Difference,
    Spread,
    holm_verdicts,
    paired_t50_difference,
    pooled_seed_spread,
    rate_difference,
    seed_spread,
    seeds_per_arm,
    t50_arm_difference,
)
from phaseflip.stats.selection import paired_difference


def inference(params: dict[str, Any] | None) -> InferenceConfig:
    """The pre-registered level, power and smallest effects (`forecast.inference` in conf/)."""
    return InferenceConfig.model_validate(((params or {}).get("forecast") or {}).get("inference") or {})


def grid_spread(real: pd.DataFrame) -> Spread | None:
    """The seed SD of t50 pooled over every grid point with >= 2 crossing seeds (df = sum of n_i - 1)."""
    return pooled_seed_spread([[float(v) for v in g.t50.dropna()]
                               for _, g in real.groupby(["lr", "n_real", "dream_k"], sort=True)])


def fmt(value: Any, lo: Any = None, hi: Any = None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def fmt_int(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _lag(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.1f}"


def _last_rate(study: pd.DataFrame, run_id: str) -> str:
    rate = pick(study[study.run_id == run_id], "behavior_rate").sort_values("step")
    if rate.empty:
        return "n/a"
    r = rate.iloc[-1]
    return f"{fmt(r.value, r.lo, r.hi)} (step {int(r.step)}, n={int(r.n)})"


def q1(study: pd.DataFrame, transitions: pd.DataFrame, best_ckpt: Any, max_steps: int, threshold: float,
       params: dict[str, Any] | None = None, **_: Any) -> list[str]:
    L = ["", "## Q1 — How many corrections, at which learning rate, flip the behavior?", "",
         f"`t50`: the step where the fitted {IN_DISTRIBUTION} behavior_rate crosses {threshold} (binomial GLM in "
         "step or log-step, chosen by likelihood, or the same curve with a floor and a ceiling where the AIC "
         "prefers it; 95% interval: bootstrap over scenarios, then samples). "
         f"`t50 > {max_steps}`: not crossed by the last checkpoint (right-censored), not \"never\"; \"levels off "
         "at c\": the fitted ceiling c is below the threshold (the run does not reach it). Observed crossing "
         "between: the last checkpoint whose pooled rate is below the threshold and the next one at or above it "
         "(no curve assumed). Confirmed flip: "
         "the first checkpoint whose clustered 95% interval lies above the threshold. Lags: t50 minus the earlier "
         "signal's step (`phase_diagram.png`, `curves.png`).", "",
         "| run | lr | n_real | dream_k | seed | t50 [95%] | observed crossing between | confirmed flip | "
         "rate at last checkpoint [95%] | grad-norm peak (lag) | dissimilarity peak (lag) | change point (lag) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in transitions.itertuples():
        L.append(f"| {t.run_id} | {t.lr:g} | {t.n_real} | {t.dream_k} | {t.seed} | {t.t50_text} | {_bracket(t)} | "
                 f"{fmt_int(t.confirmed_flip_step)} | {_last_rate(study, t.run_id)} | "
                 f"{fmt_int(t.grad_norm_peak_step)} ({_lag(t.lag_grad_norm_peak)}) | "
                 f"{fmt_int(t.dissimilarity_peak_step)} ({_lag(t.lag_dissimilarity_peak)}) | "
                 f"{fmt_int(t.change_point_step)} ({_lag(t.lag_change_point)}) |")
    real = transitions[~transitions.control.astype(bool)]
    crossed = real[real.flipped.astype(bool)]
    L += ["", f"**Answer.** {len(crossed)} of {len(real)} real runs crossed {threshold} within {max_steps} steps"
          + (f", at {len(set(crossed.lr))} learning rate(s)." if len(crossed) else ".")]
    for (lr, n_real, dream_k), grp in real.groupby(["lr", "n_real", "dream_k"], sort=True):
        L.append(f"- lr {lr:g}, {n_real} real corrections, {dream_k} dreams each: "
                 + "; ".join(f"seed {t.seed}: {t.t50_text}" for t in grp.itertuples()))
    for t in transitions[transitions.control.astype(bool)].itertuples():
        L.append(f"- negative control `{t.run_id}`: {t.t50_text}"
                 + (" (it should not cross: a crossing here means the judge or the data leak the behavior)"
                    if t.flipped else ""))
    L += _seed_lines(real, params)
    ns = sorted({str(n) for n in real.n_real})
    L.append(f"\nThis grid covers n_real in {{{', '.join(ns)}}}: zones of n_real without runs are not claimed.")
    if best_ckpt is not None:
        L += ["", f"Best LoRA checkpoint (chosen on {IN_DISTRIBUTION}, among those evaluated on every family): "
                  f"`{best_ckpt.run_id}` step {int(best_ckpt.step)}, behavior_rate "
                  f"{fmt(best_ckpt.value, best_ckpt.lo, best_ckpt.hi)}."]
    return L


def _bracket(t: Any) -> str:
    """The checkpoints whose observed pooled rates bracket the threshold ('6-10'), or n/a."""
    lo, hi = getattr(t, "bracket_below", None), getattr(t, "bracket_above", None)
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "n/a"
    return f"steps {int(lo)}-{int(hi)}"


def _seed_lines(real: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
    """The seed spread of t50 per replicated grid point, pooled, and the seeds per arm it implies for the
    pre-registered smallest effect (`forecast.inference.smallest_t50_difference`)."""
    inf = inference(params)
    L: list[str] = []
    for (lr, n_real, dream_k), grp in real.groupby(["lr", "n_real", "dream_k"], sort=True):
        if grp.seed.nunique() < 2:
            continue
        spread = seed_spread([float(v) for v in grp.t50.dropna()])
        L.append(f"\nSeed spread of t50 at lr {lr:g}, n_real {n_real}, dream_k {dream_k} ({grp.seed.nunique()} seeds): "
                 + (f"SD {spread.sd:.2f} steps [95% {spread.lo:.2f}, {spread.hi:.2f}]." if spread is not None
                    else "fewer than 2 crossed, not measured."))
    pooled = grid_spread(real)
    effect = inf.smallest_t50_difference
    per_point = real.groupby(["lr", "n_real", "dream_k"]).seed.nunique()
    if pooled is None:
        return L + [f"\nPower: no grid point has two crossing seeds, so the seed spread of t50 is not measured and "
                    f"no t50 comparison can be planned; the smallest effect of interest is {effect:g} steps "
                    "(`forecast.inference`)."]
    need, need_hi = (seeds_per_arm(v, effect, inf.power, inf.alpha) for v in (pooled.sd, pooled.hi))
    L.append(f"\nPower, planned for the pre-registered smallest effect of {effect:g} steps of t50 "
             f"(`forecast.inference.smallest_t50_difference`): the seed SD pooled over the replicated grid points is "
             f"{pooled.sd:.2f} steps [95% {pooled.lo:.2f}, {pooled.hi:.2f}] (df {pooled.df}). A two-sided t test at "
             f"alpha {inf.alpha:g} with power {inf.power:g} needs **{need} seeds per arm** ({need_hi} at the SD's "
             f"upper bound); this grid has {int(per_point.min())}-{int(per_point.max())} seed(s) per grid point.")
    return L


def q2(transitions: pd.DataFrame, mirage: pd.DataFrame | None = None, params: dict[str, Any] | None = None,
       **_: Any) -> list[str]:
    inf = inference(params)
    L = ["", "## Q2 — Sharp or smooth? The mirage test", ""]
    if mirage is None or not len(mirage):
        return L + ["No mirage test in this study's outputs (`results/forecast/mirage.csv`): rerun the forecast stage."]
    metric = str(mirage.metric.iloc[0])
    L += [f"The mirage reading (the sharpness is the yes/no metric's, not the model's) claims that each scenario's "
          f"sampled rate is a fixed function of its `{metric}`, the same at every checkpoint and in every run. Tested "
          f"per run and pooled: a binomial GLM of every (scenario, checkpoint) on a natural spline of `{metric}` "
          f"({inf.mirage_link_df} columns) against the same plus {inf.mirage_step_df} step terms, the step terms' "
          f"score clustered on scenario with a wild-bootstrap p-value (`stats/mirage.py`). p < {inf.alpha:g}: step "
          "adds what the continuous metric does not (not a mirage); otherwise the rate is consistent with a fixed link "
          "(no proof of one). Its error rates on simulated runs: README, *Validated by simulation* "
          "(`python -m phaseflip.stats.simulation`). Sharpness (steepest neighbouring slope / mean slope; "
          "descriptive only) beside it.", "",
          "| run | test | p | reading | sharpness: behavior_rate / p_preferred / margin |", "|---|---|---|---|---|"]
    sharp = transitions.set_index("run_id")
    for r in mirage.itertuples():
        test = "n/a" if pd.isna(r.p_value) else f"score {r.statistic:.2f}, {int(r.scenarios)} scenarios"
        p = "n/a" if pd.isna(r.p_value) else f"{r.p_value:.3g}"
        reading = r.verdict if not pd.isna(r.p_value) else f"not testable: {r.reason}"
        if r.run_id in sharp.index:
            t = sharp.loc[r.run_id]
            desc = " / ".join(fmt(t[f"sharpness_{m}"]) for m in ("behavior_rate", "p_preferred", "margin"))
        else:
            desc = "—"
        L.append(f"| {r.run_id}{' (control)' if r.control else ''} | {test} | {p} | {reading} | {desc} |")
    pooled = mirage[mirage.run_id == "pooled"]
    if len(pooled) and not pd.isna(pooled.p_value.iloc[0]):
        r = pooled.iloc[0]
        L += ["", f"**Answer (pooled over the non-control runs, p = {r.p_value:.3g}).** "
              + ("Step adds to the continuous metric: the flip in the sampled rate is not only the yes/no metric's "
                 "nonlinearity." if r.p_value < inf.alpha else
                 f"No evidence that step adds to `{metric}`: the sampled rate is consistent with a fixed link of the "
                 "continuous metric, as the mirage reading predicts (not proof of it; see the test's power).")]
    return L


def q3(transitions: pd.DataFrame, study: pd.DataFrame, dreams: dict[str, Any], data: dict[str, Any],
       effective_count: Any, counts: dict[str, pd.DataFrame] | None = None, threshold: float = 0.5,
       params: dict[str, Any] | None = None, **_: Any) -> list[str]:
    inf = inference(params)
    counts = counts or {}
    dream_counts = dreams.get("counts", {})
    L = ["", "## Q3 — Do dreams multiply the corrections?", "",
         "Dream report: " + (", ".join(f"{k} {v}" for k, v in dream_counts.items()) or "no dreams") + "."]
    if "diversity" in dreams:
        L.append("Diversity: " + ", ".join(f"{k} {v}" for k, v in dreams["diversity"].items()) + ".")
    real = transitions[~transitions.control.astype(bool)].copy()
    n_corr = int(data["corrections"])
    real["effective"] = [effective_count(n, k, n_corr) for n, k in zip(real.n_real, real.dream_k, strict=True)]
    with_dreams = real[real.dream_k > 0]
    if not len(with_dreams):
        return L + ["No run in this grid trains on dreams (train.dream_k=[0]), so real vs dreams cannot be "
                    "compared from this study: add `train__dream_k=[0,10]` (or run `study=full`)."]
    spread = grid_spread(real)
    n_boot = int(((params or {}).get("forecast") or {}).get("n_bootstrap", 200))
    L += ["", "t50 difference = with dreams minus without, same lr and seed. *Paired*: a bootstrap that resamples the "
              "scenarios once for both runs (they are scored on the same ones), then each run's replies: evaluation "
              "noise only. *Arms*: the difference between the two grid points, with the seed spread of t50 pooled "
              "over the replicated grid points (d ± t_df · √2 · SD; never narrower than the paired one): the interval "
              "the reading uses (coverage by simulation: README).", "",
          "| comparison | with dreams | t50 | without dreams | t50 | difference | paired 95% | arms 95% | reading |",
          "|---|---|---|---|---|---|---|---|---|"]
    for d in with_dreams.itertuples():
        for label, match in (
            ("equal effective count", real[(real.dream_k == 0) & (real.effective == d.effective)]),
            ("same real corrections", real[(real.dream_k == 0) & (real.n_real.astype(str) == str(d.n_real))]),
        ):
            for r in match[(match.lr == d.lr) & (match.seed == d.seed)].itertuples():
                L.append(f"| {label} ({d.effective} vs {r.effective} examples) | `{d.run_id}` | {d.t50_text} | "
                         f"`{r.run_id}` | {r.t50_text} | " + _t50_cells(d, r, counts, spread, threshold, n_boot) + " |")
    if spread is None:
        L.append("\nNo grid point has two crossing seeds: the seed spread of t50, the noise a dreams effect must beat, "
                 "is not measured, so no difference is read as earlier or later (add a second seed at a crossing "
                 "point, `train.extra_runs`).")
    else:
        need = seeds_per_arm(spread.sd, inf.smallest_t50_difference, inf.power, inf.alpha)
        L.append(f"\nPower: one seed per arm here; the pooled seed SD {spread.sd:.2f} steps (df {spread.df}) means a "
                 f"difference of {inf.smallest_t50_difference:g} steps (the pre-registered smallest effect) needs "
                 f"{need} seeds per arm (two-sided t test, alpha {inf.alpha:g}, power {inf.power:g}).")
    return L


def _t50_cells(a: Any, b: Any, counts: dict[str, pd.DataFrame], spread: Spread | None, threshold: float,
               n_boot: int) -> str:
    """difference | paired interval | arms interval | reading, for a (with dreams) minus b (without)."""
    if not (a.flipped and b.flipped):
        return "n/a | n/a | n/a | not comparable (a run did not cross)"
    point = float(a.t50 - b.t50)
    paired = None
    if a.run_id in counts and b.run_id in counts:
        paired = paired_t50_difference(counts[a.run_id], counts[b.run_id], point, threshold, n_boot, seed=0)
    arms = t50_arm_difference(point, paired, spread)

    def cell(d: Difference | None) -> str:
        return "n/a" if d is None else f"[{d.lo:+.1f}, {d.hi:+.1f}]"

    if arms is None:
        reading = "not resolved: seed spread not measured"
    else:
        reading = "dreams later" if arms.lo > 0 else "dreams earlier" if arms.hi < 0 else "no difference resolved"
    return f"{point:+.1f} steps | {cell(paired)} | {cell(arms)} | {reading}"


def q5(study: pd.DataFrame, best_ckpt: Any, comp: pd.DataFrame, base: pd.DataFrame,
       family_notes: dict[str, str] | None = None, params: dict[str, Any] | None = None,
       held_out: HeldOut | None = None, **_: Any) -> list[str]:
    L = ["", "## Q5 — Beyond the training format, and the cost elsewhere", ""]
    if best_ckpt is None:
        return L + ["No trained checkpoint to compare."]
    lora = comp[comp.setup.str.startswith("LoRA")].set_index("family")
    base_rows = comp[comp.setup == "base model"].set_index("family")
    ood_at_best = EvalConfig.model_validate((params or {}).get("eval") or {}).ood_at_best
    candidates = "each run's last and best checkpoint" if ood_at_best else \
        "each run's last checkpoint, fixed in advance (`eval.ood_at_best: false`)"
    L += [f"Best checkpoint `{best_ckpt.run_id}` step {int(best_ckpt.step)} (the highest in_distribution "
          f"behavior_rate among {candidates}) vs the base model, behavior_rate per "
          "family, every scenario of each family sampled until its interval half-width is small (`eval.adaptive`). "
          "Change = best minus base with its 95% interval (MOVER from the two clustered intervals, which treats the "
          "two setups as independent though they share scenarios: conservative); the up/down readings are "
          f"Holm-adjusted over the families at alpha {inference(params).alpha:g} (`statsmodels` multipletests); "
          "`families.png`.", "",
          "| family | scenarios | base [95%] | best checkpoint [95%] | change [95%] | Holm p | reading | "
          "resolves 0.3? |", "|---|---|---|---|---|---|---|---|"]
    at_best = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)
                    & (study.metric == "p_preferred")]
    scen = at_best.set_index("family").n if "n" in at_best else pd.Series(dtype=float)  # scored scenarios
    families = [f for f in sorted(lora.index, key=lambda f: (f != IN_DISTRIBUTION, f != "all", f))
                if f in base_rows.index]
    diffs = [rate_difference((lora.loc[f].behavior_rate, lora.loc[f].lo, lora.loc[f].hi),
                             (base_rows.loc[f].behavior_rate, base_rows.loc[f].lo, base_rows.loc[f].hi))
             for f in families]
    # Holm over the families proper: "all" pools them, so it is read but not counted as one more test
    tested = [i for i, f in enumerate(families) if f != "all"]
    holm = dict(zip(tested, holm_verdicts([diffs[i] for i in tested], inference(params).alpha), strict=True))
    for i, (family, diff) in enumerate(zip(families, diffs, strict=True)):
        b, c = base_rows.loc[family], lora.loc[family]
        reading, p_adj = holm.get(i, (diff.verdict() + " (pooled; not in the Holm family)", math.nan))
        L.append(f"| {family} | {fmt_int(scen.get(family))} | {fmt(b.behavior_rate, b.lo, b.hi)} | "
                 f"{fmt(c.behavior_rate, c.lo, c.hi)} | {fmt(diff.value, diff.lo, diff.hi)} | "
                 f"{'n/a' if math.isnan(p_adj) else f'{p_adj:.3g}'} | {reading} | "
                 f"{'yes' if diff.half_width <= 0.3 else 'no'} (±{diff.half_width:.2f}) |")
    if held_out is not None and "LoRA" in held_out.choices and held_out.base is not None:
        c = held_out.choices["LoRA"]
        d = paired_difference(c.counts, held_out.base_counts)  # the same report-half scenarios
        L.append(f"\n{IN_DISTRIBUTION} without the winner's curse (the row above was chosen and read on the same "
                 f"replies): {held_out_label('LoRA', c.choice)}, chosen on the selection half, reads "
                 f"{fmt(c.rate, c.lo, c.hi)} on the report half ({c.scenarios} scenarios) vs the base model's "
                 f"{fmt(*held_out.base)} there: change {fmt(d.value, d.lo, d.hi)} (paired over those scenarios), "
                 f"{d.verdict()}.")
    notes = family_notes or {}  # behavior-specific prose comes from the behavior's YAML only
    L += [f"\n(`{family}`: {notes[family]})" for family in sorted(lora.index) if family in notes]
    sel = study[(study.run_id == best_ckpt.run_id) & (study.step == best_ckpt.step)]
    L.append("")
    for metric in ["retention_kl", "retention_loss"]:
        v, b = pick(sel, metric, "all"), pick(base, metric, "all")
        if len(v) and len(b):
            L.append(f"- {metric}: base {fmt(b.value.iloc[0], digits=3)} → best checkpoint "
                     f"{fmt(v.value.iloc[0], digits=3)}")
    return L


def best_setting(table: pd.DataFrame, keys: list[str]) -> pd.Series | None:
    """The setting with the highest in-distribution behavior_rate (ties: higher p_preferred)."""
    rate = pick(table, "behavior_rate")
    if rate.empty:
        return None
    pp = pick(table, "p_preferred")[keys + ["value"]].rename(columns={"value": "pp"})
    ranked = rate.merge(pp, on=keys, how="left").sort_values(["value", "pp"], ascending=False)
    return ranked.iloc[0]


def _screen_lines(steer: pd.DataFrame) -> list[str]:
    """What the steering screen covered and its best setting per training set (its own rates)."""
    screened = steer[steer.metric.astype(str).str.startswith("screen_")]
    if screened.empty:
        return []
    bound = fmt(float(screened.max_retention_kl.iloc[0])) if "max_retention_kl" in screened else "n/a"
    settings = screened[["training_set", "layer", "multiplier"]].drop_duplicates()
    n_grid = settings.training_set.nunique() * settings.layer.nunique() * settings.multiplier.nunique()
    searched = (f"; the bracketing search scored {len(settings)} of them, every layer"
                if len(settings) < n_grid else "")
    L = ["", f"Steering screen: {settings.training_set.nunique()} training sets x {settings.layer.nunique()} "
         f"layers x {settings.multiplier.nunique()} multipliers {sorted(settings.multiplier.unique().tolist())} "
         f"= {n_grid} settings{searched}, each scored on {IN_DISTRIBUTION} margin, p_preferred and "
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
            return fmt(r[("value", metric)], r[("lo", metric)], r[("hi", metric)])

        L.append(f"- {tset}: layer {int(layer)} x{mult:g}: p_preferred {cell('screen_p_preferred')}, "
                 f"forced_choice {cell('screen_forced_choice')}, retention_kl "
                 f"{fmt(r[('value', 'screen_retention_kl')])} "
                 f"({len(eligible)} of {len(sub)} settings under the bound)")
    base_pp = pick(steer[steer.layer == -1], "p_preferred")
    if len(base_pp):
        b = base_pp.iloc[0]
        L.append(f"- base model (no steering): p_preferred {fmt(b.value, b.lo, b.hi)}")
    return L


def q4(comp: pd.DataFrame, steer: pd.DataFrame, icl: pd.DataFrame, best_steer: Any, held_out: HeldOut | None = None,
       **_: Any) -> list[str]:
    families = sorted(comp.family.unique(), key=lambda f: (f != IN_DISTRIBUTION, f != "all", f))
    L = ["", "## Q4 — Steering and in-context examples vs LoRA", "",
         f"behavior_rate per family (95% interval, clustered by scenario); each setup's best setting chosen on "
         f"{IN_DISTRIBUTION} only, other families reported as found (no selection on them). The "
         f"{IN_DISTRIBUTION} column is read on the replies the choice was made on (optimistic, most for LoRA, "
         "which has the most candidates); the held-out table below is the one the answer reads:", "",
         "| setup | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for setup, grp in comp.groupby("setup", sort=False):
        cells = grp.set_index("family")
        L.append(f"| {setup} | " + " | ".join(
            fmt(cells.behavior_rate[f], cells.lo[f], cells.hi[f]) if f in cells.index else "n/a" for f in families)
            + " |")
    L += _screen_lines(steer)
    swept = steer[steer.layer >= 0]
    if len(pick(swept, "behavior_rate")):
        L += ["", "Steering, fully evaluated settings, best per training set (on in_distribution):", ""]
        for tset, grp in swept.groupby("training_set"):
            b = best_setting(grp, ["layer", "multiplier"])
            if b is not None:
                coh = pick(grp[(grp.layer == b.layer) & (grp.multiplier == b.multiplier)], "coherence")
                L.append(f"- {tset}: layer {int(b.layer)} x{b.multiplier:g}: behavior_rate {fmt(b.value, b.lo, b.hi)}"
                         f", coherence {fmt(coh.value.iloc[0]) if len(coh) else 'n/a'} "
                         f"({pick(grp, 'behavior_rate')[['layer', 'multiplier']].drop_duplicates().shape[0]} "
                         "fully evaluated)")
    rates = pick(icl, "behavior_rate").sort_values("k")
    if len(rates):
        L += ["", "ICL behavior_rate by k: " + ", ".join(
            f"k={int(k)}: {fmt(v, lo, hi)}" for k, v, lo, hi in zip(rates.k, rates.value, rates.lo, rates.hi,
                                                                    strict=True)) + "."]
    L += held_out_lines(held_out)
    L += _q4_answer(comp, held_out)
    return L


def held_out_lines(held_out: HeldOut | None) -> list[str]:
    """The held-out selection table (`report.held_out`): chosen on one half of the scenarios, read on the other."""
    if held_out is None or not held_out.choices:
        return ["", "No held-out selection: the baselines' per-scenario tables are missing (a study from before "
                    "`steering_scenarios.csv` / `icl_scenarios.csv`) or there are < 4 scenarios to split."]
    L = ["", f"Best settings without the winner's curse (`stats.selection`, one rule for every setup): the "
             f"{held_out.selection_scenarios + held_out.report_scenarios} {IN_DISTRIBUTION} scenarios are split "
             f"once (seed {held_out.seed}) into a selection half ({held_out.selection_scenarios}) and a report half "
             f"({held_out.report_scenarios}); each setup's candidate with the highest rate on the first is read on "
             "the second, whose replies played no part in the choice (the interval is about sqrt(2) wider than on "
             "every scenario).", "",
         "| setup | candidates | chosen on the selection half | its rate there (chosen on) | "
         "rate on the report half [95%] |", "|---|---|---|---|---|"]
    if held_out.base is not None:
        L.append(f"| base model | 1 | - | - | {fmt(*held_out.base)} |")
    for setup, c in held_out.choices.items():
        L.append(f"| {setup} | {c.candidates} | {held_out_label(setup, c.choice)} | {fmt(c.selection_rate)} | "
                 f"{fmt(c.rate, c.lo, c.hi)} |")
    return L


def _q4_answer(comp: pd.DataFrame, held_out: HeldOut | None = None) -> list[str]:
    """LoRA's best minus each training-free baseline's best, in-distribution, as a difference with its 95%
    interval: training is needed only where every difference is resolved above 0 (two overlapping intervals
    can still differ; this tests the difference itself). Read on the held-out report half where there is
    one, paired over its scenarios (`stats.selection.paired_difference`); otherwise on the replies the
    choices were made on (MOVER from the two clustered intervals, as if independent), said so."""
    diffs: list[Difference] = []
    labels: list[str] = []
    if held_out is not None and "LoRA" in held_out.choices and len(held_out.choices) > 1:
        lora_c = held_out.choices["LoRA"]
        for setup, c in held_out.choices.items():
            if setup != "LoRA":
                labels.append(held_out_label(setup, c.choice))
                diffs.append(paired_difference(lora_c.counts, c.counts))
        how = (f"on the held-out report half, chosen on the selection half; 95% interval paired over the "
               f"{held_out.report_scenarios} report-half scenarios: MOVER with the correlation of the two rates")
    else:
        lora = comp[comp.setup.str.startswith("LoRA") & (comp.family == IN_DISTRIBUTION)]
        others = comp[~comp.setup.str.startswith("LoRA") & (comp.family == IN_DISTRIBUTION)
                      & (comp.setup != "base model")]
        if lora.empty or others.empty:
            return []
        best = lora.iloc[0]
        for o in others.itertuples():
            labels.append(str(o.setup))
            diffs.append(rate_difference((best.behavior_rate, best.lo, best.hi), (o.behavior_rate, o.lo, o.hi)))
        how = ("on the replies each choice was made on: optimistic, most for LoRA; 95% MOVER interval, "
               "conservative: the setups share scenarios")
    L = ["", f"LoRA's best minus each baseline's best ({IN_DISTRIBUTION} behavior_rate {how}):", ""]
    L += [f"- vs {label}: {fmt(d.value, d.lo, d.hi)}" for label, d in zip(labels, diffs, strict=True)]
    if all(d.lo > 0 for d in diffs):
        L.append("\nAnswer: LoRA's best in-distribution rate is above every training-free baseline's, each "
                 "difference resolved above 0: training is needed here.")
    elif any(d.hi < 0 for d in diffs):
        L.append("\nAnswer: a training-free baseline's rate is above LoRA's best (difference resolved below 0).")
    else:
        closest = min(diffs, key=lambda d: d.value)
        L.append("\nAnswer: not resolved: at least one training-free baseline's difference from LoRA includes 0 "
                 f"(closest {fmt(closest.value, closest.lo, closest.hi)}, half-width ±{closest.half_width:.2f}); "
                 "the data do not show that training is needed.")
    return L


TARGET_COVERAGE = (0.70, 0.90)  # the primary's 80% interval at every origin from 25% of max_steps on


def _lr_scaling(transitions: pd.DataFrame) -> list[str]:
    from phaseflip.forecast.methods import RunData, lr_scaling_fit

    empty = pd.DataFrame()
    runs = [RunData(str(t.run_id), float(t.lr), bool(t.control), empty, empty, empty,
                    t50=None if pd.isna(t.t50) else float(t.t50)) for t in transitions.itertuples()]
    fit = lr_scaling_fit(runs)
    if fit is None:
        return ["", "Learning-rate scaling (t50 · lr^γ): fewer than 3 crossed runs at >= 2 learning rates; "
                    "γ cannot be estimated from this study."]
    lo, hi = fit.lr_range
    studied = sorted({float(v) for v in transitions.lr if lo <= float(v) <= hi})
    # only between the learning rates studied: the geometric midpoints of neighbours, no extrapolation
    mids = [float(np.sqrt(a * b)) for a, b in zip(studied, studied[1:], strict=False)]
    preds = ", ".join(f"lr {lr:.2g}: {fmt(*fit.predict(lr, 0.8)[:3], digits=1)}" for lr in mids) or "none"
    gamma = fmt(fit.gamma, fit.gamma_lo, fit.gamma_hi)
    return ["", f"Learning-rate scaling over {fit.n_runs} crossed runs at lr {lo:g}-{hi:g}: γ = {gamma}"
                f" (95%; t50 ∝ lr^-γ). Forecast t50 between the studied learning rates (80% prediction interval): "
                f"{preds}. Outside [{lo:g}, {hi:g}] it makes no forecast: the scaling is not known to hold there."]


def q6(forecasts: pd.DataFrame, quality: pd.DataFrame, transitions: pd.DataFrame, max_steps: int,
        bench_summary: pd.DataFrame | None = None, params: dict[str, Any] | None = None, **_: Any) -> list[str]:
    from phaseflip.forecast.scores import format_origins, format_summary, summary_row, verdict

    fcfg = (params or {}).get("forecast", {})
    primary = fcfg.get("primary", "pooled_link")
    recal = (fcfg.get("recalibration") or {}).get("method")
    methods = [primary] + ([f"{recal}_recalibrated"] if recal and f"{recal}_recalibrated" != primary
                           and f"{recal}_recalibrated" in set(forecasts.get("method", [])) else [])
    name = "this study (leave-one-configuration-out)"
    study = pd.DataFrame([summary_row(forecasts, quality, m, max_steps, name) for m in methods]) \
        if len(forecasts) else None
    L = ["", "## Q6 — Can the flip be forecast from early checkpoints?", ""]
    lead = [verdict(r, r["method"], "On this study (leave-one-configuration-out)")
            for r in study.to_dict("records")] if study is not None else ["This study has no forecast to score."]
    if bench_summary is not None and len(bench_summary):
        lead += [verdict(r, r.get("method", primary), f"On the `{r['generator']}` generator")
                 for r in bench_summary.to_dict("records")]
    L += [" ".join(lead), "",
          f"Pre-registered primary forecaster: **`{primary}`** (conf/forecast/). Forecasts are made from every "
          "evaluated checkpoint (the origin), each seeing only the run's checkpoints up to it and the finished runs "
          "of the *other* configurations (a run's other seeds excluded); a run that has already crossed by the "
          "origin gets \"already crossed\", not a forecast. Each forecast is a distribution of t50 censored at "
          f"max_steps = {max_steps} (`forecasts.csv`: `p_cross_by_max_steps`, `q10`-`q90`), scored by the CRPS of "
          "min(t50, max_steps); skill = 1 - CRPS / CRPS(reference) against `linear` extrapolation of the "
          "continuous metric and `climatology` (the other configurations' t50), with 95% intervals from a paired "
          "bootstrap over runs. \"Beats from origin s\": at s and at every later origin with at least 5 paired "
          "runs, the interval vs both references lies above 0. Skill and coverage below pool the origins from "
          "25% of max_steps on. Coverage is the PIT's (the chance the randomised PIT falls in the central 80% band, "
          "which a calibrated forecaster meets exactly even where runs do not cross); after it, the share of 80% "
          "intervals that hold the truth, which over-counts runs that do not cross. `forecast.png`: each run's "
          "forecast fans."]
    if len(methods) > 1:
        L += ["", f"Beside it, `{methods[1]}`: the same forecasts remapped through the distribution of their PITs on "
                  "the other configurations' finished runs (each of those forecast without this run's configuration; "
                  "quantile recalibration, `forecast.recalibration`)."]
    if bench_summary is not None and len(bench_summary):
        def label(r: dict[str, Any]) -> str:
            return f"`{r['generator']}`" + (f" · `{r['method']}`" if r.get("method", primary) != primary else "")

        missed = [f"{label(r)} {fmt(r['coverage_80_min'])}-{fmt(r['coverage_80_max'])}"
                  for r in bench_summary.to_dict("records")
                  if not (TARGET_COVERAGE[0] <= (r["coverage_80_min"] if pd.notna(r["coverage_80_min"]) else -1)
                          and (r["coverage_80_max"] if pd.notna(r["coverage_80_max"]) else 9) <= TARGET_COVERAGE[1])]
        L += ["", "**Simulation benchmark** (known t50; one row per pre-registered generator, "
                  "`results/forecast/bench/`, PIT histograms: `calibration.png`):", "", format_summary(bench_summary),
              "", f"Target: 80% coverage in [{TARGET_COVERAGE[0]:.2f}, {TARGET_COVERAGE[1]:.2f}] at every origin from "
                  "25% of max_steps on: " + ("met on every generator." if not missed else
                                            "**missed** on " + "; ".join(missed) + " (per-origin range).")]
    if study is not None:
        L += ["", "**This study** (leave-one-configuration-out; t50 is itself an estimate):", "",
              format_summary(study), "", format_origins(quality, [*methods, "linear", "climatology"])]
    if not int(transitions.flipped.sum()):
        L += ["", "No run crossed: only false alarms (`p_cross_by_max_steps` of runs that never cross) are measured "
                  "on this study."]
    return L + _lr_scaling(transitions)
