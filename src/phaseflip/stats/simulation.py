"""Where the truth is known: simulated studies that score the intervals and the mirage test the report uses.

Each simulated study has the default grid's shape: the same in-distribution scenarios scored at the same
checkpoints in every run, replies per (scenario, checkpoint) as the adaptive sampler takes them (few far
from the threshold, more near it); a replicated grid point (two seeds) and two single-seed arms, as the
default study's dreams comparison. A scenario's latent progress is

    z = z0 + u_i + v * exp(e_seed + w_i) * clock(step)

(u_i: scenario offsets, w_i: scenario speeds, e_seed: seed-to-seed speed), its continuous metric
(p_preferred) expit(z / 2 + 0.3), and its behavior rate a function of z + r_i (r_i: a propensity the
metric misses, 0 but in `propensity`) that the analysis does not assume
(a floor, a ceiling, a plateau, a delayed clock...). In every generator but the `power_*` ones the rate does not
depend on step given z, so the mirage null (the rate is a fixed link of the continuous metric) holds by
construction: those rows measure the mirage test's type-I error; the `power_*` rows (a jump in the rate
at a step the continuous metric does not see; a rate driven by step) measure its power.

Truths: a run's t50 is where its population rate (the mean over 4,000 scenario draws) crosses the
threshold; an arm's t50 is that at e_seed = 0 (the median seed). Scored, at 95%:

- `t50`: each run's bootstrap interval (`stats.t50.fit_t50`) against the run's own t50;
- `t50_diff_paired`: the paired bootstrap interval of arm B - arm C (`paired_t50_difference`) against the
  difference of those two runs' t50s (what it claims: evaluation noise only);
- `t50_diff_arms`: the interval with the pooled seed spread (`t50_arm_difference`) against the arms' t50
  difference (what the report reads as "earlier" / "later");
- `rate_diff`: the MOVER interval of the rate change from step 0 to the last checkpoint of a run
  (`rate_difference` of two clustered intervals, as Q5's best-minus-base) against the population change;
- `rate_diff_paired`: arm B minus arm C at the middle checkpoint, two runs on the same scenarios, by the
  MOVER interval with their correlation (`paired_rate_difference`, as Q4's held-out comparison) against
  the difference of the two runs' population rates there;
- `mirage`: the share of runs (and of pooled studies) where the test rejects at 0.05.

    python -m phaseflip.stats.simulation --studies 60 --out results/simulation
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from phaseflip.stats.differences import (
    paired_rate_difference,
    paired_t50_difference,
    pooled_seed_spread,
    rate_difference,
    t50_arm_difference,
)
from phaseflip.stats.intervals import clustered_interval
from phaseflip.stats.mirage import mirage_test
from phaseflip.stats.t50 import fit_t50

STEPS = (0, 2, 3, 6, 10, 16)  # a default-study schedule: step 0, then checkpoints as the pilot places them
THRESHOLD = 0.5
N_SCENARIOS = 30
Z0 = -3.0
V = 0.42  # an in-class run at e_seed = 0 crosses near step 7


def expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


@dataclass(frozen=True)
class Generator:
    name: str
    description: str
    rate: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] = lambda z, s, u: expit(z)
    clock: Callable[[np.ndarray], np.ndarray] = lambda s: np.asarray(s, dtype=float)
    sd_offset: float = 0.7  # u_i
    sd_speed: float = 0.15  # w_i
    sd_seed: float = 0.1  # e_seed
    sd_propensity: float = 0.0  # r_i: a scenario's pull towards the behavior that its continuous metric misses
    mirage: bool = True  # the rate is a function of z alone


GENERATORS: dict[str, Generator] = {g.name: g for g in [
    Generator("logistic", "rate = expit(z), linear clock: the analysis' own class"),
    Generator("floor", "a floor of 0.2 (judge false positives): rate = 0.2 + 0.8 expit(z)",
              rate=lambda z, s, u: 0.2 + 0.8 * expit(z)),
    Generator("floor_ceiling", "rate = 0.15 + 0.7 expit(z): a floor and a ceiling at 0.85",
              rate=lambda z, s, u: 0.15 + 0.7 * expit(z)),
    Generator("plateau", "rate = 0.75 expit(z): a plateau below 1", rate=lambda z, s, u: 0.75 * expit(z)),
    Generator("delayed_onset", "flat until step 4, then twice as fast",
              clock=lambda s: 2.0 * np.maximum(np.asarray(s, dtype=float) - 4.0, 0.0)),
    Generator("heterogeneous", "scenario offsets sd 2, speeds sd 0.5: scenario curves not copies of each other",
              sd_offset=2.0, sd_speed=0.5),
    Generator("propensity", "each scenario's rate offset (logit sd 1) beyond its metric: replies cluster given x",
              sd_propensity=1.0),
    Generator("seed_variation", "seed-to-seed speed sd 0.3 (t50 varies about 30% between seeds)", sd_seed=0.3),
    Generator("power_jump", "the rate's logit jumps by 2 from step 6 on; the continuous metric does not",
              rate=lambda z, s, u: expit(z + 2.0 * (s >= 6)), mirage=False),
    Generator("power_step_driven", "the rate follows step (expit(1.2 (step - 7) + u)), not the metric's level",
              rate=lambda z, s, u: expit(1.2 * (s - 7.0) + u), mirage=False),
]}

ARMS = {"A": 1.0, "B": 1.25, "C": 0.9}  # speed multipliers: A has two seeds (the replicated grid point)


@dataclass
class SimRun:
    arm: str
    seed_effect: float
    cells: pd.DataFrame  # step, scenario_id, k, n, x
    truth_t50: float


@dataclass
class Truths:
    """Population rates by Monte Carlo over scenario draws (common random numbers for every run)."""
    gen: Generator
    u: np.ndarray = field(init=False)
    w: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(12345)
        self.u = rng.normal(0, self.gen.sd_offset, 4000)
        self.w = rng.normal(0, self.gen.sd_speed, 4000)
        self.r = rng.normal(0, self.gen.sd_propensity, 4000)

    def rate(self, speed: float, step: float) -> float:
        s = np.array(float(step))
        z = Z0 + self.u + V * speed * np.exp(self.w) * self.gen.clock(s)
        return float(np.mean(self.gen.rate(z + self.r, np.full_like(z, float(step)), self.u)))

    def t50(self, speed: float, horizon: float = 64.0) -> float:
        """Step where the population rate crosses the threshold (bisection; inf if not by `horizon`)."""
        if self.rate(speed, horizon) < THRESHOLD:
            return math.inf
        lo, hi = 0.0, horizon
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.rate(speed, mid) < THRESHOLD else (lo, mid)
        return (lo + hi) / 2


def _replies(rate: np.ndarray) -> int:
    """Replies per scenario at one checkpoint: 4, and up to 16 while the pooled rate is near the threshold."""
    p = float(np.mean(rate))
    return 16 if abs(p - THRESHOLD) < 0.15 else 8 if abs(p - THRESHOLD) < 0.3 else 4


def simulate_run(gen: Generator, speed: float, seed_effect: float, u: np.ndarray, w: np.ndarray, r: np.ndarray,
                 rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for s in STEPS:
        z = Z0 + u + V * speed * np.exp(seed_effect + w) * gen.clock(np.array(float(s)))
        rate = np.clip(gen.rate(z + r, np.full_like(z, float(s)), u), 0.0, 1.0)
        n = _replies(rate)
        k = rng.binomial(n, rate)
        x = expit(z / 2 + 0.3)
        rows += [(s, i, int(k[i]), n, float(x[i])) for i in range(len(u))]
    return pd.DataFrame(rows, columns=["step", "scenario_id", "k", "n", "x"])


def simulate_study(gen: Generator, truths: Truths, rng: np.random.Generator) -> list[SimRun]:
    u = rng.normal(0, gen.sd_offset, N_SCENARIOS)  # the study's scenarios: the same in every run
    w = rng.normal(0, gen.sd_speed, N_SCENARIOS)
    r = rng.normal(0, gen.sd_propensity, N_SCENARIOS)
    runs = []
    for arm, seeds in (("A", 2), ("B", 1), ("C", 1)):
        for _ in range(seeds):
            e = float(rng.normal(0, gen.sd_seed))
            speed = ARMS[arm] * math.exp(e)
            runs.append(SimRun(arm, e, simulate_run(gen, ARMS[arm], e, u, w, r, rng), truths.t50(speed)))
    return runs


def _covers(lo: float | None, hi: float | None, truth: float) -> float:
    if lo is None or hi is None or not math.isfinite(truth):
        return math.nan
    return float(lo <= truth <= hi)


def score_study(gen: Generator, truths: Truths, runs: list[SimRun], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """One simulated study's hits: per interval, covered (1/0, nan where not scored) and the mirage tests."""
    fits = [fit_t50(r.cells, THRESHOLD, n_bootstrap, seed=seed + i) for i, r in enumerate(runs)]
    t50_hits = [_covers(f.lo, f.hi, r.truth_t50) for f, r in zip(fits, runs, strict=True) if f.censored == ""]
    mirage_runs = [mirage_test(r.cells).p_value for r in runs]
    pooled = mirage_test(pd.concat([r.cells.assign(run=i) for i, r in enumerate(runs)], ignore_index=True))
    out: dict[str, Any] = {"t50": t50_hits, "mirage_run": [p < 0.05 for p in mirage_runs if p is not None],
                           "mirage_pooled": [pooled.p_value < 0.05] if pooled.p_value is not None else []}
    ib, ic = (next(i for i, r in enumerate(runs) if r.arm == arm) for arm in ("B", "C"))
    fb, fc = fits[ib], fits[ic]
    replicate = [f.t50 for f, r in zip(fits, runs, strict=True) if r.arm == "A" and f.t50 is not None]
    out["t50_diff_paired"], out["t50_diff_arms"] = [], []
    if fb.t50 is not None and fc.t50 is not None:
        point = fb.t50 - fc.t50
        paired = paired_t50_difference(runs[ib].cells, runs[ic].cells, point, THRESHOLD, n_bootstrap, seed=seed)
        out["t50_diff_paired"] = [_covers(paired.lo, paired.hi, runs[ib].truth_t50 - runs[ic].truth_t50)]
        arms = t50_arm_difference(point, paired, pooled_seed_spread([replicate]))
        if arms is not None:
            out["t50_diff_arms"] = [_covers(arms.lo, arms.hi, truths.t50(ARMS["B"]) - truths.t50(ARMS["C"]))]
    r0 = runs[0]
    first, last = (r0.cells[r0.cells.step == s] for s in (STEPS[0], STEPS[-1]))
    ends = [(float(c.k.sum() / c.n.sum()), *clustered_interval(c.k.tolist(), c.n.tolist())) for c in (last, first)]
    diff = rate_difference(ends[0], ends[1])  # type: ignore[arg-type]
    speed = ARMS[r0.arm] * math.exp(r0.seed_effect)
    out["rate_diff"] = [_covers(diff.lo, diff.hi, truths.rate(speed, STEPS[-1]) - truths.rate(speed, STEPS[0]))]
    # two setups on the same scenarios (as Q4's held-out comparison): arm B minus arm C at a checkpoint
    # near the crossing, paired over the scenarios, against the two runs' population rates there
    step = STEPS[len(STEPS) // 2]
    b_cells, c_cells = (runs[i].cells[runs[i].cells.step == step].groupby("scenario_id")[["k", "n"]].sum()
                        for i in (ib, ic))
    both = b_cells.join(c_cells, lsuffix="_b", rsuffix="_c", how="inner")
    paired_rate = paired_rate_difference(both.k_b.to_numpy(), both.n_b.to_numpy(), both.k_c.to_numpy(),
                                         both.n_c.to_numpy())
    speeds = [ARMS[runs[i].arm] * math.exp(runs[i].seed_effect) for i in (ib, ic)]
    out["rate_diff_paired"] = [_covers(paired_rate.lo, paired_rate.hi,
                                       truths.rate(speeds[0], step) - truths.rate(speeds[1], step))]
    return out


def run_suite(generators: list[str], studies: int, n_bootstrap: int = 100, seed: int = 0,
              progress: bool = True) -> pd.DataFrame:
    """Per generator and interval (or test): hits, scored cases, the rate and its 95% Wilson interval."""
    rows = []
    for name in generators:
        gen = GENERATORS[name]
        # the generator's place in the suite, not in `generators`: a run of some generators (`--only`, two
        # halves in parallel) draws the same studies as the run of all of them
        g_i = list(GENERATORS).index(name)
        truths = Truths(gen)
        hits: dict[str, list[float]] = {}
        t0 = time.time()
        for s in range(studies):
            rng = np.random.default_rng([seed, g_i, s])
            for key, values in score_study(gen, truths, simulate_study(gen, truths, rng), n_bootstrap,
                                           seed=1000 * s).items():
                hits.setdefault(key, []).extend(float(v) for v in values if not math.isnan(float(v)))
        for key, values in hits.items():
            k, n = int(sum(values)), len(values)
            lo, hi = proportion_confint(k, n, method="wilson") if n else (math.nan, math.nan)
            measure = ("type_I_error" if gen.mirage else "power") if key.startswith("mirage") else "coverage_95"
            rows.append({"generator": name, "interval": key, "measure": measure, "hits": k, "n": n,
                         "rate": k / n if n else math.nan, "lo": lo, "hi": hi})
        if progress:
            print(f"simulation: {name}: {studies} studies in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


TARGETS = {"coverage_95": (0.92, 0.98), "type_I_error": (0.0, 0.05)}


def target_mark(measure: str, rate: float, lo: float, hi: float) -> str:
    """'met' (the rate inside the target band), 'consistent' (outside, but its 95% interval reaches the band:
    more studies would tell), 'missed' (the whole interval outside), or 'reported' (power: no target)."""
    band = TARGETS.get(measure)
    if band is None:
        return "reported"
    if band[0] <= rate <= band[1]:
        return "met"
    return "consistent" if lo <= band[1] and hi >= band[0] else "missed"


def format_table(table: pd.DataFrame) -> str:
    """Markdown: generator x interval -> coverage (target 0.92-0.98) or mirage error rate."""
    L = ["| generator | interval / test | measure | rate [95%] | n | target |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        band = TARGETS.get(str(r.measure))
        mark = target_mark(str(r.measure), r.rate, r.lo, r.hi)
        target = f"{band[0]:.2f}-{band[1]:.2f}: {mark}" if band else mark
        L.append(f"| {r.generator} | {r.interval} | {r.measure} | {r.rate:.2f} [{r.lo:.2f}, {r.hi:.2f}] | "
                 f"{r.n} | {target} |")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phaseflip.stats.simulation", description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=60, help="simulated studies per generator (4 runs each)")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples per interval")
    ap.add_argument("--only", nargs="*", default=None, help=f"generators (default all: {', '.join(GENERATORS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for simulation.csv and simulation.md")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(GENERATORS))
    if unknown:
        ap.error(f"unknown generator(s) {unknown}; known: {', '.join(GENERATORS)}")
    table = run_suite(args.only or list(GENERATORS), args.studies, args.bootstrap, args.seed)
    text = format_table(table)
    print(text)
    if args.out is not None:
        from phaseflip.io import write_csv, write_text

        write_csv(args.out / "simulation.csv", table)
        write_text(args.out / "simulation.md", text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
