"""The pilot: learning rates (and evaluated checkpoints) placed from data so each run crosses mid-budget.

A grid tuned on one behavior and model does not transfer: the same lr can flip another behavior before the
first checkpoint, or not at all. Under `train.lrs: auto` the `pilot` stage (a Snakemake checkpoint, so the
grid is decided inside the DAG) does what a researcher would do by hand:

1. **Probe.** Train on every real correction at a probe lr (`train.pilot.start_lr`; the grid's own recipe,
   a seed none of the grid's runs uses) and measure the judged behavior rate after every step on the
   first `max_scenarios` in-distribution scenarios (`n_samples` replies each; p_preferred beside it).
   A probe ends once `above_steps` consecutive steps are at or above the flip threshold, or at max_steps.
2. **Read the crossing.** The step where the weighted isotonic (monotone) fit of rate against step first
   reaches the threshold, interpolated between the two steps that bracket it (`crossing`): monotone, so it
   has no shape to be wrong about (floors, ceilings and plateaus included).
   A rate that rose past the threshold and fell back clearly (`Probe.rose_and_fell`) is read on its rise
   (the steps up to its peak): the behavior does not hold at that lr.
3. **Move.** A crossing outside `window` x max_steps moves the next probe's lr by the predicted factor
   (t50 ~ lr^-beta), at most `factor`; no crossing multiplies it by `factor`; a crossing before step 1 divides
   it by `factor`; a rate that fell back halves it (1/sqrt(factor)). At most `max_probes` probes.
4. **Choose.** From the probe whose crossing is nearest the targets, lr_i = lr_ref x (t_ref / (target_i x
   max_steps))^(1/beta), rounded to two significant digits, the main lr first. beta is measured (least
   squares of log t50 on log lr) where two or more probes crossed inside the budget, else `train.pilot.beta`
   (t50 ~ 1/lr: the same loss drop in proportion to the step size). No probe crossing: the grid falls back to
   the probes' lrs, and says so.
5. **Place checkpoints** (`checkpoint_steps: auto`, `auto_checkpoints`): `n_checkpoints` steps, the last
   always, two before the window's low edge (so a run crossing inside the window has two forecast origins
   before it), the rest spread over the predicted crossings (so they are bracketed closely).

Everything a run of the grid needs from it is in `results/pilot/grid.json` (`read_grid`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

from phaseflip.config import PILOT_TRAIN_FIELDS, PilotConfig, TrainConfig
from phaseflip.interventions.train import lr_text
from phaseflip.io import DataError, read_json
from phaseflip.stats.intervals import wilson_interval

GRID_FILE = "grid.json"


@dataclass
class Probe:
    """One probe run's curve: the judged rate (k of n replies) and p_preferred at each evaluated step."""

    lr: float
    steps: list[int] = field(default_factory=list)
    k: list[int] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    p_preferred: list[float] = field(default_factory=list)
    status: str = "completed"  # the probe's training status (stopped: it crossed and ended early)
    seconds: float = 0.0

    def add(self, step: int, k: int, n: int, p_preferred: float) -> None:
        self.steps.append(step)
        self.k.append(k)
        self.n.append(n)
        self.p_preferred.append(p_preferred)

    def rates(self) -> list[float]:
        return [k / n if n else math.nan for k, n in zip(self.k, self.n, strict=True)]

    def t50(self, threshold: float) -> float | None:
        """The crossing of the isotonic fit; for a rate that rose past the threshold and fell back, the
        crossing of its rise (the steps up to its peak)."""
        peak = self.peak_index()
        if self.rose_and_fell(threshold):
            return crossing(self.steps[: peak + 1], self.k[: peak + 1], self.n[: peak + 1], threshold)
        return crossing(self.steps, self.k, self.n, threshold)

    def peak_index(self) -> int:
        rates = np.array(self.rates(), float)
        return int(np.nanargmax(rates)) if len(rates) and np.isfinite(rates).any() else 0

    def rose_and_fell(self, threshold: float) -> bool:
        """The rate rose past the threshold and fell back clearly: the peak step is at or above it, and the
        last two evaluated steps (pooled) lie below it with a 95% Wilson interval that does not overlap the
        peak's (sampling noise around a flat rate is not a fall)."""
        i = self.peak_index()
        if len(self.steps) < 4 or i >= len(self.steps) - 2 or self.k[i] < threshold * self.n[i]:
            return False
        k, n = sum(self.k[-2:]), sum(self.n[-2:])
        if not n or k >= threshold * n:
            return False
        return bool(wilson_interval(k, n)[1] < wilson_interval(self.k[i], self.n[i])[0])

    def base_above(self, threshold: float) -> bool:
        """The untrained model (step 0) is clearly above the threshold (its 95% Wilson interval lies above it,
        so sampling noise near the threshold does not end the pilot): no lr places a crossing."""
        if not self.steps or self.steps[0] != 0 or self.n[0] == 0:
            return False
        return bool(wilson_interval(self.k[0], self.n[0])[0] > threshold)

    def above(self, threshold: float, steps: int) -> bool:
        """The last `steps` evaluated steps (after step 0) were all at or above the threshold."""
        rates = [r for s, r in zip(self.steps, self.rates(), strict=True) if s > 0][-steps:]
        return len(rates) == steps and all(r >= threshold for r in rates)


def crossing(steps: list[int], k: list[int], n: list[int], threshold: float) -> float | None:
    """The step where the weighted isotonic fit of k/n on step first reaches `threshold`, interpolated
    linearly between the bracketing steps; 0.0 if the first step is already there; None if never."""
    keep = [i for i, m in enumerate(n) if m > 0]
    if not keep:
        return None
    order = sorted(keep, key=lambda i: steps[i])
    s = np.array([steps[i] for i in order], dtype=float)
    rate = np.array([k[i] / n[i] for i in order])
    fit = isotonic_regression(rate, weights=np.array([n[i] for i in order], dtype=float), increasing=True).x
    above = np.nonzero(fit >= threshold)[0]
    if not len(above):
        return None
    j = int(above[0])
    if j == 0:
        return float(s[0])
    f0, f1 = fit[j - 1], fit[j]
    return float(s[j - 1] + (threshold - f0) / (f1 - f0) * (s[j] - s[j - 1]))


def _rounded(lr: float) -> float:
    """Two significant digits (run ids write at most two)."""
    return float(f"{lr:.1e}")


# A crossing earlier than this fraction of max_steps times the lr too coarsely (a step or two, read off a
# few noisy checkpoints) to measure beta from: simulated with a floor and 24 replies per step, betas from
# such probes came out 0.45-0.63 for a true 0.8 and misplaced the grid by 2x.
MIN_TIMED_FRACTION = 0.15


def measured_beta(probes: list[Probe], threshold: float, max_steps: int, cfg: PilotConfig) -> float | None:
    """beta of t50 ~ lr^-beta from the probes that crossed inside the budget, no earlier than
    MIN_TIMED_FRACTION x max_steps (at least two lrs); None when there are fewer."""
    earliest = max(1.0, MIN_TIMED_FRACTION * max_steps)
    points = [(p.lr, t) for p in probes if (t := p.t50(threshold)) is not None and earliest <= t <= max_steps]
    if len({lr for lr, _ in points}) < 2:
        return None
    x = np.log([lr for lr, _ in points])
    y = np.log([t for _, t in points])
    slope = float(np.polyfit(x, y, 1)[0])
    return float(np.clip(-slope, *cfg.beta_range))


def next_probe_lr(probes: list[Probe], cfg: PilotConfig, threshold: float, max_steps: int) -> float | None:
    """The next probe's lr, or None when probing is done (a crossing inside the window, or no probes left)."""
    if not probes or len(probes) >= cfg.max_probes:
        return None if probes else cfg.start_lr
    last = probes[-1]
    if last.base_above(threshold):
        return None
    t = last.t50(threshold)
    low, high = (w * max_steps for w in cfg.window)
    if last.rose_and_fell(threshold):  # the behavior does not hold at this lr: a slower, gentler one
        lr = _rounded(last.lr / math.sqrt(cfg.factor))
        return None if any(math.isclose(lr, p.lr) for p in probes) else lr
    if t is not None and low <= t <= high:
        return None
    beta = measured_beta(probes, threshold, max_steps, cfg) or cfg.beta
    target = max_steps * sum(cfg.window) / 2
    if t is None and last.status == "diverged":  # blew up before crossing: slower
        ratio = 1 / cfg.factor
    elif t is None:  # no crossing in the budget: faster
        ratio = cfg.factor
    elif t < 1:  # crossed within the first step: the time is not measurable, only "too fast"
        ratio = 1 / cfg.factor
    else:
        ratio = float(np.clip((t / target) ** (1 / beta), 1 / cfg.factor, cfg.factor))
    lr = _rounded(last.lr * ratio)
    if any(math.isclose(lr, p.lr) for p in probes):
        return None
    return lr


@dataclass
class GridChoice:
    lrs: list[float]  # the grid's lrs, main first (under explicit lrs: those)
    chosen_by: str  # "pilot", "fallback" (no probe crossed) or "config" (explicit lrs)
    beta: float
    beta_source: str  # "measured" or "assumed"
    reference: dict[str, float] | None  # the probe the lrs are extrapolated from: lr, t50
    predicted_t50: dict[str, float | None]  # per lr (as text), the predicted crossing step
    checkpoint_steps: list[int] | None  # under `checkpoint_steps: auto`, else None
    note: str


def _peak(probe: Probe) -> str:
    """'peak 0.75 at step 11, 0.25 at the end' (or 'diverged at step 4')."""
    rates = probe.rates()
    if not rates:
        return "no data"
    i = probe.peak_index()
    text = f"peak {rates[i]:.2f} at step {probe.steps[i]}, {rates[-1]:.2f} at step {probe.steps[-1]}"
    return text + (", diverged" if probe.status == "diverged" else "")


def unstable_note(unstable: list[Probe], slower: list[Probe], threshold: float, max_steps: int, beta: float,
                  cfg: PilotConfig) -> str:
    """What a rate that rose past the threshold and fell back means for the grid, and the budget that would
    place a crossing mid-budget at a slower lr."""
    lowest = min(unstable, key=lambda p: p.lr)
    text = "; ".join(f"at lr {lr_text(p.lr)} the rate rose past {threshold} and fell back ({_peak(p)})"
                     for p in sorted(unstable, key=lambda p: p.lr))
    text += f": the behavior does not hold there, so no grid lr is at or above {lr_text(lowest.lr)}"
    rise = lowest.t50(threshold)
    if rise is not None and not any(p.t50(threshold) is not None for p in slower):
        slow = max(slower, key=lambda p: p.lr, default=None)
        slow_lr = slow.lr if slow is not None else _rounded(lowest.lr / math.sqrt(cfg.factor))
        expected = predict_t50(slow_lr, (lowest.lr, max(rise, 0.5)), beta)
        seen = f"expected near step {expected:.0f}"
        if slow is not None and slow.steps and slow.steps[-1] >= expected:  # it ran past that and did not cross
            expected = float(slow.steps[-1] + 1)
            seen = f"not reached by step {slow.steps[-1]}"
        needed = math.ceil(expected / (sum(cfg.targets) / len(cfg.targets)))
        if needed > max_steps:
            text += (f"; at lr {lr_text(slow_lr)} the crossing is {seen}, not mid-budget: train.max_steps >= "
                     f"{needed} would give it room (or the behavior may not hold at any lr)")
    return text


def predict_t50(lr: float, reference: tuple[float, float], beta: float) -> float:
    lr_ref, t_ref = reference
    return t_ref * (lr_ref / lr) ** beta


def choose_grid(probes: list[Probe], train: TrainConfig, threshold: float) -> GridChoice:
    """The grid's lrs and (under `checkpoint_steps: auto`) its evaluated checkpoints, from the probes."""
    cfg, max_steps = train.pilot, train.max_steps
    measured = measured_beta(probes, threshold, max_steps, cfg)
    beta = measured if measured is not None else cfg.beta
    unstable = [p for p in probes if p.rose_and_fell(threshold)]
    cap = min((p.lr for p in unstable), default=math.inf)  # no grid lr at or above an lr whose rate fell back
    held = [p for p in probes if p not in unstable]
    # a crossing that held is the reference; only the rise of one that fell back when none held
    crossed = [(p.lr, t) for p in (held if any(p.t50(threshold) is not None for p in held) else probes)
               if (t := p.t50(threshold)) is not None]
    timed = [(lr, t) for lr, t in crossed if t >= 1]
    target_mid = max_steps * sum(cfg.targets) / len(cfg.targets)
    reference: tuple[float, float] | None = None
    if timed:
        reference = min(timed, key=lambda c: abs(math.log(c[1] / target_mid)))
    elif crossed:  # every crossing came within the first step: extrapolate from the slowest, at most step 1
        lr, t = min(crossed)
        reference = (lr, max(t, 0.5))
    base_above = any(p.base_above(threshold) for p in probes)
    if base_above:
        reference = None
    if train.lrs != "auto":
        lrs, chosen_by = list(train.lrs), "config"
        note = "train.lrs given in the config: the pilot only predicted their crossings"
    elif reference is None:
        # The probes that did not diverge, the fastest first (at most one per target); all of them if every one did.
        usable = sorted({p.lr for p in held if p.status != "diverged"} or {p.lr for p in probes}, reverse=True)
        lrs, chosen_by = usable[: len(cfg.targets)], "fallback"
        if base_above:
            note = (f"the untrained model is already at or above {threshold} on the pilot's scenarios: no lr "
                    "places a crossing; the grid falls back to the probe's lr (check the judge and the base rate)")
        else:
            peaks = "; ".join(f"lr {lr_text(p.lr)}: {_peak(p)}" for p in probes)
            note = (f"no probe crossed {threshold} within {max_steps} steps ({peaks}): the grid falls back to the "
                    "probes' lrs; a rate that rose and fell again means the behavior does not hold at these lrs "
                    "(look at probes.csv), one that stays low asks for a higher train.pilot.start_lr or "
                    "max_steps; or set train.lrs")
    else:
        wanted = [_rounded(reference[0] * (reference[1] / (f * max_steps)) ** (1 / beta)) for f in cfg.targets]
        # where the behavior stops holding lies between the fastest lr that held and the slowest that fell
        # back: above their geometric midpoint the grid takes the one that held (or the next probe's lr)
        below = [p.lr for p in held if p.lr < cap and p.status != "diverged"]
        safe = max(below) if below else _rounded(cap / math.sqrt(cfg.factor))
        limit = math.sqrt(safe * cap) if below else cap
        lrs = list(dict.fromkeys(lr if lr < limit else safe for lr in wanted))
        chosen_by = "pilot"
        note = (f"extrapolated from the probe at lr {lr_text(reference[0])} (t50 {reference[1]:.1f}) with "
                f"beta {beta:.2f} ({'measured' if measured is not None else 'assumed'})")
    if unstable and train.lrs == "auto":
        note += "; " + unstable_note(unstable, [p for p in held if p.lr < cap], threshold, max_steps, beta, cfg)
    predicted = {lr_text(lr): (predict_t50(lr, reference, beta) if reference else None) for lr in lrs}
    steps = None
    if train.checkpoint_steps == "auto":
        steps = auto_checkpoints([t for t in predicted.values() if t is not None], max_steps, cfg.n_checkpoints,
                                 early=cfg.window[0] * max_steps)
    return GridChoice(lrs, chosen_by, beta, "measured" if measured is not None else "assumed",
                      {"lr": reference[0], "t50": reference[1]} if reference else None, predicted, steps, note)


def auto_checkpoints(predicted: list[float], max_steps: int, n: int, early: float | None = None) -> list[int]:
    """`n` evaluated steps: the last (max_steps) always; two early ones at a half and three quarters of `early`
    (the window's low edge, window[0] x max_steps), so a run crossing anywhere in the window has two forecast
    origins before it; the rest spread from 0.9 x the earliest predicted crossing to 1.1 x the latest, so the
    crossings are bracketed closely (without a prediction: evenly over what is left). Fewer when the budget
    has fewer steps."""
    if max_steps <= n:
        return list(range(1, max_steps + 1))
    early = 0.25 * max_steps if early is None else early
    picked: list[int] = []
    for f in (0.5, 0.75)[: max(0, min(2, n - 2))]:
        step = max(1, int(round(f * early)), picked[-1] + 1 if picked else 1)
        if step < max_steps:
            picked.append(step)
    inside = [min(max(t, 1.0), float(max_steps)) for t in predicted]
    first = (picked[-1] + 1) if picked else 1
    lo, hi = (0.9 * min(inside), 1.1 * max(inside)) if inside else (float(first), max_steps - 1.0)
    lo, hi = max(float(first), lo), min(max_steps - 1.0, hi)
    lo = min(lo, hi)
    m = n - 1 - len(picked)
    picked = sorted({*picked, *(int(round(v)) for v in np.linspace(lo, hi, m) if m > 0)})
    spare = [s for s in range(1, max_steps) if s not in picked]
    while len(picked) < n - 1 and spare:  # rounding merged two: the nearest free step to the range's middle
        mid = (lo + hi) / 2
        picked = sorted([*picked, spare.pop(int(np.argmin([abs(s - mid) for s in spare])))])
    return [*picked, max_steps]


def probe_key(params: dict[str, Any], lr: float) -> str:
    """What a probe's curve depends on: a finished probe with the same key is reused (an interrupted
    pilot loses no finished probe)."""
    keep = {k: params.get(k) for k in ("model", "behavior", "eval", "seed", "compute")}
    train = params.get("train", {})  # not the grid's lrs or checkpoints: a probe's curve does not read them
    keep["train"] = {k: train[k] for k in PILOT_TRAIN_FIELDS if k in train and k not in ("lrs", "checkpoint_steps")}
    return hashlib.sha256(json.dumps({"params": keep, "lr": lr}, sort_keys=True, default=str).encode()).hexdigest()


ProbeFn = Callable[[float], Probe]


def run_pilot(probe: ProbeFn, train: TrainConfig, threshold: float, say: Callable[[str], None] = print) -> tuple[
        list[Probe], GridChoice]:
    """Probe (`probe(lr)` trains and measures one probe) until `next_probe_lr` says done; then choose."""
    probes: list[Probe] = []
    while (lr := next_probe_lr(probes, train.pilot, threshold, train.max_steps)) is not None:
        say(f"pilot: probe {len(probes) + 1}/{train.pilot.max_probes} at lr {lr:.2g}")
        result = probe(lr)
        probes.append(result)
        t = result.t50(threshold)
        rates = " ".join(f"{r:.2f}" for r in result.rates())
        say(f"pilot: lr {lr:.2g}: rate by step {rates}; "
            + (f"crosses {threshold} at step {t:.1f}" if t is not None else f"no crossing by step {result.steps[-1]}")
            + f" ({result.seconds:.0f}s)")
    choice = choose_grid(probes, train, threshold)
    say(f"pilot: grid lrs {', '.join(f'{lr:.2g}' for lr in choice.lrs)} ({choice.chosen_by}: {choice.note})")
    if choice.checkpoint_steps:
        say(f"pilot: evaluated checkpoints {choice.checkpoint_steps}")
    return probes, choice


def grid_record(probes: list[Probe], choice: GridChoice, threshold: float, seconds: float) -> dict[str, Any]:
    """What results/pilot/grid.json holds."""
    return {
        "lrs": choice.lrs, "chosen_by": choice.chosen_by, "note": choice.note,
        "beta": choice.beta, "beta_source": choice.beta_source, "reference": choice.reference,
        "predicted_t50": choice.predicted_t50, "checkpoint_steps": choice.checkpoint_steps,
        "threshold": threshold, "seconds": round(seconds, 1),
        "probes": [{**asdict(p), "t50": p.t50(threshold)} for p in probes],
    }


def read_grid(path: str | Path) -> dict[str, Any]:
    """results/pilot/grid.json, checked for the fields the grid's jobs read."""
    record = read_json(Path(path))
    lrs = record.get("lrs")
    if not isinstance(lrs, list) or not lrs or not all(isinstance(v, int | float) and v > 0 for v in lrs):
        raise DataError(f"{path}: field 'lrs' must be a non-empty list of positive numbers, got {lrs!r}")
    steps = record.get("checkpoint_steps")
    if steps is not None and (not isinstance(steps, list) or not all(isinstance(s, int) and s > 0 for s in steps)):
        raise DataError(f"{path}: field 'checkpoint_steps' must be null or a list of positive integers, got {steps!r}")
    return record


def probe_folder(out: Path, lr: float) -> Path:
    return out / "probes" / f"lr{lr_text(lr)}"


def clear_checkpoints(folder: Path) -> None:
    """A probe's adapters are not kept (its curve is): only the grid's runs are evaluated later."""
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
