"""The report's figures (docs/design.md §8), one function per PNG. Each takes tidy tables and a path; no computation
beyond selecting and plotting, so what a figure shows is what the CSV tables hold.

Metrics tables are tidy: (run_id, step, family, metric, value, lo, hi) plus the run's lr, n_real,
dream_k, seed, control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phaseflip.data import IN_DISTRIBUTION
from phaseflip.plotting import plt, savefig

CURVE_METRICS = ["behavior_rate", "margin", "p_preferred", "forced_choice", "coherence", "heldout_loss",
                 "retention_kl", "retention_loss", "dissimilarity", "steering_cosine"]
FAMILY_OF = {"retention_kl": "all", "retention_loss": "all", "dissimilarity": "all", "steering_cosine": "all"}


def pick(table: pd.DataFrame, metric: str, family: str = IN_DISTRIBUTION) -> pd.DataFrame:
    return table[(table.metric == metric) & (table.family == family)]


def _colors(keys: list[Any]) -> dict[Any, Any]:
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def curves_figure(study: pd.DataFrame, transitions: pd.DataFrame, forecasts: pd.DataFrame, threshold: float,
                  path: Path) -> None:
    """behavior_rate and margin vs step, one panel per learning rate; transition and forecast marked."""
    lrs = sorted(study.lr.unique())
    fig, axes = plt.subplots(2, len(lrs), figsize=(5 * len(lrs), 7), squeeze=False, sharex=True)
    colors = _colors(sorted(study.run_id.unique()))
    for col, lr in enumerate(lrs):
        for run_id, run in study[study.lr == lr].groupby("run_id"):
            color = colors[run_id]
            for row, metric in enumerate(["behavior_rate", "margin"]):
                ax = axes[row][col]
                c = pick(run, metric).sort_values("step")
                ax.plot(c.step, c.value, marker="o", ms=3, color=color, label=run_id)
                ax.fill_between(c.step, c.lo, c.hi, color=color, alpha=0.12)
                t = transitions[transitions.run_id == run_id]
                if len(t) and bool(t.flipped.iloc[0]):  # t50 and its 95% interval
                    ax.axvline(float(t.t50.iloc[0]), color=color, ls="--", lw=1)
                    hi = min(float(t.t50_hi.iloc[0]), float(t.last_step.iloc[0]))
                    ax.axvspan(float(t.t50_lo.iloc[0]), hi, color=color, alpha=0.12, lw=0)
            fc = forecasts[(forecasts.run_id == run_id) & forecasts.primary.astype(bool)
                           & forecasts.forecast_made.astype(bool) & np.isfinite(forecasts.q50)]
            for f in fc.itertuples():  # where each origin's forecast put the flip, at the threshold line
                hi = f.q90 if np.isfinite(f.q90) else f.q50
                err = [[max(0.0, f.q50 - f.q10)], [max(0.0, hi - f.q50)]]
                axes[0][col].errorbar(f.q50, threshold, xerr=err,
                                      marker="x", ms=7, color=color, capsize=2, lw=0.8)
        axes[0][col].axhline(threshold, color="grey", lw=0.8)
        axes[0][col].set_ylim(-0.02, 1.02)
        axes[0][col].set_title(f"lr {lr:g}: behavior_rate ({IN_DISTRIBUTION})")
        axes[1][col].set_title(f"lr {lr:g}: margin ({IN_DISTRIBUTION})")
        axes[1][col].axhline(0, color="grey", lw=0.8)
        axes[1][col].set_xlabel("training step")
        axes[0][col].legend(fontsize=7)
    fig.suptitle("Dashed line and band: t50 (fitted rate crosses the threshold) and its 95% interval; bands "
                 "around curves: 95% intervals. x with bar: the primary's median forecast and 80% interval from "
                 "each origin.", fontsize=9)
    savefig(fig, path)


def all_metrics_figure(study: pd.DataFrame, path: Path) -> None:
    """Every order parameter vs step, colored by learning rate (one line per run)."""
    metrics = [m for m in CURVE_METRICS if m in set(study.metric)]
    ncols = 5
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    colors = _colors(sorted(study.lr.unique()))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for _, run in study.groupby("run_id"):
            c = pick(run, metric, FAMILY_OF.get(metric, IN_DISTRIBUTION)).sort_values("step")
            control = bool(run.control.iloc[0])
            ax.plot(c.step, c.value, marker=".", color=colors[run.lr.iloc[0]], ls=":" if control else "-",
                    label=f"lr {run.lr.iloc[0]:g}" + (" control" if control else ""))
        ax.set_title(f"{metric} ({FAMILY_OF.get(metric, IN_DISTRIBUTION)})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    savefig(fig, path)


def phase_diagram(transitions: pd.DataFrame, max_steps: int, path: Path) -> None:
    """n_real x lr -> t50 with its 95% interval (one line per seed), or 't50 > max'; real-only runs."""
    runs = transitions[~transitions.control.astype(bool) & (transitions.dream_k == 0)].copy()
    runs["n_real"] = runs.n_real.astype(str)
    lrs = sorted(runs.lr.unique())
    ns = sorted(runs.n_real.unique(), key=lambda n: (n == "all", int(n) if n.isdigit() else 0))
    grid = np.full((len(ns), len(lrs)), np.nan)
    text = [["" for _ in lrs] for _ in ns]
    for i, n in enumerate(ns):
        for j, lr in enumerate(lrs):
            cell = runs[(runs.n_real == n) & (runs.lr == lr)]
            if not len(cell):
                continue
            flipped = cell[cell.flipped.astype(bool)]
            if len(flipped):
                grid[i, j] = flipped.t50.astype(float).mean()
            text[i][j] = "\n".join(str(t).replace(" [", "\n[") if len(cell) == 1 else str(t)
                                   for t in cell.t50_text)
    fig, ax = plt.subplots(figsize=(1.6 * len(lrs) + 2, 1.0 * len(ns) + 1.5))
    im = ax.imshow(grid, cmap="viridis_r", vmin=0, vmax=max_steps, aspect="auto")
    for i in range(len(ns)):
        for j in range(len(lrs)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(grid[i, j]) else "black")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(ns)), ns)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("real corrections (n_real)")
    ax.set_title("Phase diagram: t50 [95% interval] per seed")
    fig.colorbar(im, ax=ax, label="t50 (step where the fitted rate crosses the threshold)")
    savefig(fig, path)


def dreams_figure(study: pd.DataFrame, path: Path) -> None:
    """behavior_rate vs step of runs with dreams against real-only runs, labelled by effective count."""
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = study[~study.control.astype(bool)]
    for run_id, run in runs.groupby("run_id"):
        info = run.iloc[0]
        c = pick(run, "behavior_rate").sort_values("step")
        dreams = int(info.dream_k) > 0
        ax.plot(c.step, c.value, marker="o", ms=3, ls="-" if dreams else "--",
                label=f"{run_id} ({'real + dreams' if dreams else 'real only'})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"behavior_rate ({IN_DISTRIBUTION})")
    ax.set_title("Dreams vs real corrections")
    ax.legend(fontsize=7)
    savefig(fig, path)


def families_figure(comparison: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    families = sorted(comparison.family.unique(), key=lambda f: (f != IN_DISTRIBUTION, f != "all", f))
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
    ax.set_title("behavior_rate per eval family (settings chosen on in_distribution)")
    ax.legend(fontsize=7)
    savefig(fig, path)


def steering_figure(steer: pd.DataFrame, path: Path) -> None:
    """The steering screen as layer x multiplier heat maps of in-distribution p_preferred, one per training
    set: settings over the retention bound are crossed out, fully evaluated ones are boxed and labelled
    with their behavior_rate; settings the bracketing search did not score are grey. Without screen rows
    (older tables): behavior_rate vs multiplier per layer."""
    screened = steer[steer.metric == "screen_p_preferred"]
    if screened.empty:
        return _steering_lines(steer, path)
    sets = sorted(screened.training_set.unique())
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 6.5), squeeze=False)
    rank = steer[steer.metric == "screen_rank"]
    rate = steer[(steer.metric == "behavior_rate") & (steer.family == IN_DISTRIBUTION) & (steer.layer >= 0)]
    for ax, tset in zip(axes[0], sets, strict=True):
        grid = screened[screened.training_set == tset].pivot_table(index="layer", columns="multiplier", values="value")
        # Centred on 0.5 (no preference) and scaled to the screen's own spread: steering moves p_preferred
        # by hundredths on a small model, which a 0..1 scale would hide.
        half = max(float(np.nanmax(np.abs(grid.values - 0.5))), 0.01)
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")  # grey: not scored (the bracketing search)
        image = ax.imshow(grid.values, aspect="auto", origin="lower", cmap=cmap, vmin=0.5 - half, vmax=0.5 + half)
        ax.set_xticks(range(len(grid.columns)), [f"{m:g}" for m in grid.columns], fontsize=7)
        ax.set_yticks(range(len(grid.index)), [str(int(layer)) for layer in grid.index], fontsize=6)
        col = {m: j for j, m in enumerate(grid.columns)}
        row = {layer: i for i, layer in enumerate(grid.index)}
        for r in rank[(rank.training_set == tset) & rank.value.isna()].itertuples():
            ax.text(col[r.multiplier], row[r.layer], "x", ha="center", va="center", color="black", fontsize=7)
        for r in rate[rate.training_set == tset].itertuples():
            ax.add_patch(plt.Rectangle((col[r.multiplier] - 0.5, row[r.layer] - 0.5), 1, 1, fill=False,
                                       edgecolor="black", lw=2))
            ax.text(col[r.multiplier], row[r.layer], f"{r.value:.2f}", ha="center", va="center", color="black",
                    fontsize=6)
        ax.set_xlabel("multiplier")
        ax.set_ylabel("layer")
        ax.set_title(f"steering screen, {tset}: p_preferred ({IN_DISTRIBUTION})\nx: over the retention bound; "
                     "box: fully evaluated (behavior_rate); grey: not scored", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.04)
    savefig(fig, path)


def _steering_lines(steer: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    base = steer[steer.layer == -1]
    for ax, metric in zip(axes, ["behavior_rate", "coherence"], strict=True):
        b = pick(base, metric)
        for (tset, layer), grp in steer[steer.layer >= 0].groupby(["training_set", "layer"]):
            c = pd.concat([pick(grp, metric), b.assign(multiplier=0.0)]).sort_values("multiplier")
            ax.plot(c.multiplier, c.value, marker="o", ls="-" if tset == "real" else "--",
                    label=f"{tset}, layer {layer}")
        ax.set_xlabel("multiplier")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"steering: {metric} ({IN_DISTRIBUTION})")
    axes[0].legend(fontsize=7)
    savefig(fig, path)


def icl_figure(icl: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for metric in ["behavior_rate", "p_preferred", "forced_choice", "coherence"]:
        c = pick(icl, metric).sort_values("k")
        ax.plot(c.k, c.value, marker="o", label=metric)
    ax.set_xlabel("k real corrections in context")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"ICL baseline ({IN_DISTRIBUTION})")
    ax.legend(fontsize=7)
    savefig(fig, path)


def forecast_figure(forecasts: pd.DataFrame, max_steps: int, path: Path) -> None:
    """Each run's forecast fan: from each origin (x), every method's median forecast of t50 with its 80%
    interval (y; beyond max_steps drawn at the top), against the run's t50 (line; runs that do not cross:
    shaded above max_steps). Origins where the run had already crossed carry no forecast."""
    runs = list(dict.fromkeys(forecasts.run_id)) if len(forecasts) else []
    methods = list(dict.fromkeys(forecasts.method)) if len(forecasts) else []
    colors = _colors(methods)
    cols = min(3, max(1, len(runs)))
    rows = max(1, -(-len(runs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, constrained_layout=True)
    top = max_steps * 1.1
    handles: dict[str, Any] = {}
    for ax, run_id in zip(axes.ravel(), runs, strict=False):
        run = forecasts[forecasts.run_id == run_id]
        actual = run.t50.dropna() if "t50" in run else pd.Series(dtype=float)
        if len(actual):
            handles["t50"] = ax.axhline(float(actual.iloc[0]), color="black", lw=1)
        else:
            handles[f"t50 > {max_steps}"] = ax.axhspan(max_steps, top, color="grey", alpha=0.15)
        for i, method in enumerate(methods):
            fc = run[(run.method == method) & run.forecast_made.astype(bool)]
            if not len(fc):
                continue
            x = fc.origin_step.to_numpy(float) + (i - len(methods) / 2) * 0.12
            y = fc.q50.to_numpy(float).clip(max=top)
            lo = fc.q10.to_numpy(float).clip(max=top)
            hi = fc.q90.to_numpy(float).clip(max=top)
            label = method + (" (primary)" if fc.primary.astype(bool).any() else "")
            handles[label] = ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o-", ms=3, lw=0.8, capsize=2,
                                         color=colors[method])
        ax.set_title(run_id, fontsize=8)
        ax.set_xlabel("origin step (checkpoints seen up to here)")
        ax.set_ylabel("forecast t50 (median, 80%)")
        ax.set_ylim(0, top)
    for ax in axes.ravel()[len(runs):]:
        ax.axis("off")
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="outside lower center", ncol=4)
    fig.suptitle("Forecast fans: t50 forecast from each origin (median and 80% interval; top = beyond max_steps) "
                 "vs the measured t50", fontsize=9)
    savefig(fig, path)
