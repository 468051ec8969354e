"""Scores of fixed-origin forecasts of t50, for a censored target.

The target is `Y = min(t50, H)` with `H = max_steps` (the training budget): a run that does not cross by
`H` has `Y = H` ("beyond"), so every run, crossing or not, is scored, and a forecast's mass beyond `H` is
exactly its probability of "does not cross within the budget". Each forecast is a set of draws of t50
(`phaseflip.forecast.analysis`); its predictive distribution of `Y` is the draws clipped at `H`. The scores:

- CRPS of that distribution at `Y` (`scoringrules.crps_ensemble`, the standard, not the "fair",
  estimator: a point mass at the truth scores 0). Clipping both sides at `H` makes it the CRPS of the
  censored variable, a proper score for it: it rewards the right probability of "beyond H" and, below
  `H`, the right crossing step, and never asks a forecaster for the unobservable t50 of a run that
  did not cross. A point forecast's CRPS is its absolute error.
- The randomised PIT (uniform within a tie, e.g. the mass beyond `H` of a run that does not cross): a
  calibrated method's PIT is uniform.
- Coverage at 50/80/95%, two ways. `pit_coverage_k` is the probability that the randomised PIT falls in
  the central k% band, ((1-k)/2, (1+k)/2): for a forecast with mass `a` beyond `H` and a run that does not
  cross, the share of [1-a, 1] inside the band. This is the coverage a calibrated forecaster has at exactly
  the nominal rate, also for a target with an atom, and it is what the tables and the coverage target
  read (`coverage_k`). `covered_k` is the plain "the central interval (`q25..q75`, `q10..q90`,
  `q025..q975`, clipped at `H`) holds the truth": where a forecast puts more than (1-k)/2 beyond `H`, its
  interval reaches `H` and holds every run that does not cross, so a calibrated forecaster over-covers by
  this measure wherever runs do not cross (`interval_coverage_k` in the tables). For a run that crosses,
  with draws free of ties, the two agree.
- The Brier score of "crosses by max_steps" (`p_cross_by_max_steps` vs the outcome) at each origin,
  runs that never cross included; their mean `p_cross` is the false-alarm probability.
- Skill = 1 - CRPS(method) / CRPS(reference), summed over the (run, origin) pairs where both forecast,
  with a 95% paired bootstrap interval that resamples runs (a run's origins stay together).
- Lead time: t50 minus the first origin from which every forecast until the crossing is within ±25% of
  t50 (`lead_within_25`) or has t50 in its 80% interval (`lead_covered_80`); 0 when none is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import scoringrules as sr

from phaseflip.forecast.methods import REFERENCES

INTERVALS = {50: ("q25", "q75"), 80: ("q10", "q90"), 95: ("q025", "q975")}
MIN_RUNS = 5  # an origin's skill interval needs at least this many runs forecast there
N_BOOT = 1000


def crps_censored(draws: np.ndarray, truth: float | None, horizon: float) -> float:
    """CRPS of the draws' distribution of min(t50, horizon) at min(truth, horizon) (truth None: beyond)."""
    y = horizon if truth is None else min(float(truth), horizon)
    return float(sr.crps_ensemble(np.array([y]), np.minimum(np.asarray(draws, float), horizon)[None, :])[0])


def _pit_range(draws: np.ndarray, truth: float | None, horizon: float) -> tuple[float, float]:
    """F(y-) and P(Y = y) of the draws' distribution of min(t50, horizon) at y = min(truth, horizon)."""
    d = np.minimum(np.asarray(draws, float), horizon)
    y = horizon if truth is None else min(float(truth), horizon)
    return float(np.mean(d < y)), float(np.mean(d == y))


def randomised_pit(draws: np.ndarray, truth: float | None, horizon: float, u: float) -> float:
    below, at = _pit_range(draws, truth, horizon)
    return below + u * at


def pit_coverage(draws: np.ndarray, truth: float | None, horizon: float, level: float) -> float:
    """P(the randomised PIT lies in the central `level` band): the coverage of a censored target that a
    calibrated forecaster has at exactly `level` on average (see the module's docstring)."""
    below, at = _pit_range(draws, truth, horizon)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    if at <= 0:
        return float(lo <= below <= hi)
    return max(0.0, min(hi, below + at) - max(lo, below)) / at


# The columns of forecasts.csv and forecast_quality.csv, also when no run has an origin to forecast from
# (a study whose runs all crossed before their first checkpoint): the files keep their contract.
FORECAST_COLUMNS = ["run_id", "configuration", "control", "lr", "origin_step", "origin_fraction", "n_checkpoints",
                    "crossed_by_origin", "method", "primary", "forecast_made", "p_cross_by_max_steps", "predicted",
                    "q025", "q10", "q25", "q50", "q75", "q90", "q975", "form", "reason", "t50", "crosses", "crps",
                    "pit", "within_25", "abs_error", "covered_50", "covered_80", "covered_95", "pit_coverage_50",
                    "pit_coverage_80", "pit_coverage_95"]
SCORE_COLUMNS = ["method", "origin_step", "origin_fraction", "primary", "runs", "forecasts", "already_crossed",
                 "crossed_early", "crps", "coverage_50", "coverage_80", "coverage_95", "interval_coverage_50",
                 "interval_coverage_80", "interval_coverage_95", "brier", "false_alarm_p",
                 "runs_not_crossing", "skill_linear", "skill_linear_lo", "skill_linear_hi", "pairs_linear",
                 "skill_climatology", "skill_climatology_lo", "skill_climatology_hi", "pairs_climatology"]


def score_forecasts(rows: list[dict[str, Any]], truth: dict[str, float | None], max_steps: float,
                    seed: int = 0) -> pd.DataFrame:
    """The forecast rows (`forecast.analysis.forecast_run`) with their scores against each run's t50 (`truth`:
    None = did not cross); the draws are dropped."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        t = truth.get(row["run_id"])
        t = None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t)
        r = {k: v for k, v in row.items() if k != "_draws"}
        r["t50"] = math.nan if t is None else t
        r["crosses"] = t is not None and t <= max_steps
        u = float(rng.random())
        draws = row.get("_draws")
        if draws is None:
            r.update(crps=math.nan, pit=math.nan, within_25=None, abs_error=math.nan,
                     **{f"covered_{k}": None for k in INTERVALS}, **{f"pit_coverage_{k}": math.nan for k in INTERVALS})
        else:
            y = max_steps if t is None else min(t, max_steps)
            r["crps"] = crps_censored(draws, t, max_steps)
            r["pit"] = randomised_pit(draws, t, max_steps, u)
            pred = min(row["predicted"], max_steps)
            r["abs_error"] = abs(pred - y)
            r["within_25"] = None if t is None else bool(abs(row["predicted"] - t) <= 0.25 * t)
            for k, (lo, hi) in INTERVALS.items():
                r[f"covered_{k}"] = bool(min(row[lo], max_steps) <= y <= min(row[hi], max_steps))
                r[f"pit_coverage_{k}"] = pit_coverage(draws, t, max_steps, k / 100)
        out.append(r)
    return pd.DataFrame(out) if out else pd.DataFrame(columns=FORECAST_COLUMNS)


def paired_skill(a: np.ndarray, b: np.ndarray, clusters: np.ndarray, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """1 - sum(a) / sum(b) and its 95% bootstrap interval, resampling clusters (runs) with their pairs."""
    if not len(a):
        return math.nan, math.nan, math.nan
    _, inv = np.unique(clusters, return_inverse=True)
    sa, sb = np.bincount(inv, weights=a), np.bincount(inv, weights=b)
    if sb.sum() <= 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(sa), (n_boot, len(sa)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = 1 - sa[idx].sum(axis=1) / sb[idx].sum(axis=1)
    boot = boot[np.isfinite(boot)]  # a resample whose reference is perfect has no ratio
    lo, hi = np.quantile(boot, [0.025, 0.975]) if len(boot) else (math.nan, math.nan)
    return float(1 - sa.sum() / sb.sum()), float(lo), float(hi)


def _pairs(fc: pd.DataFrame, method: str, ref: str) -> pd.DataFrame:
    keys = ["run_id", "origin_step"]
    m = fc[(fc.method == method) & fc.crps.notna()][[*keys, "crps"]]
    r = fc[(fc.method == ref) & fc.crps.notna()][[*keys, "crps"]]
    return m.merge(r, on=keys, suffixes=("", "_ref"))


def skill(fc: pd.DataFrame, method: str, ref: str, seed: int = 0) -> tuple[float, float, float, int]:
    """Paired skill of `method` vs `ref` over the rows of `fc` and the number of runs it rests on."""
    p = _pairs(fc, method, ref)
    s = paired_skill(p.crps.to_numpy(float), p.crps_ref.to_numpy(float), p.run_id.to_numpy(), seed=seed)
    return (*s, int(p.run_id.nunique()))


def _mean(v: pd.Series) -> float:
    v = v.dropna()
    return float(v.astype(float).mean()) if len(v) else math.nan


def score_table(fc: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per method and origin: forecasts made, mean CRPS, coverage at 50/80/95% (the PIT's, `coverage_k`, and
    the plain interval's, `interval_coverage_k`), Brier score of "crosses by
    max_steps", mean p_cross of the runs that do not cross (false alarms), runs already crossed (and how
    many of those before their t50), and the paired skill vs each reference."""
    if fc.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    rows = []
    for (method, origin), g in fc.groupby(["method", "origin_step"], sort=True):
        made = g[g.forecast_made.astype(bool)]
        never = made[~made.crosses.astype(bool)]
        crossed = g[g.crossed_by_origin.astype(bool)]
        row: dict[str, Any] = {
            "method": method, "origin_step": origin, "origin_fraction": float(g.origin_fraction.iloc[0]),
            "primary": bool(g.primary.iloc[0]), "runs": g.run_id.nunique(), "forecasts": len(made),
            "already_crossed": len(crossed),
            "crossed_early": int((crossed.t50.isna() | (crossed.t50 > origin)).sum()),
            "crps": _mean(made.crps),
            **{f"coverage_{k}": _mean(made[f"pit_coverage_{k}"]) for k in INTERVALS},
            **{f"interval_coverage_{k}": _mean(made[f"covered_{k}"]) for k in INTERVALS},
            "brier": _mean((made.p_cross_by_max_steps - made.crosses.astype(float)) ** 2),
            "false_alarm_p": _mean(never.p_cross_by_max_steps), "runs_not_crossing": len(never),
        }
        for ref in REFERENCES:
            if ref == method:
                continue
            sk, lo, hi, n = skill(fc[fc.origin_step == origin], method, ref, seed)
            row.update({f"skill_{ref}": sk, f"skill_{ref}_lo": lo, f"skill_{ref}_hi": hi, f"pairs_{ref}": n})
        rows.append(row)
    return pd.DataFrame(rows)


def judged_origins(table: pd.DataFrame, method: str, min_runs: int = MIN_RUNS) -> int:
    """How many origins have at least `min_runs` paired runs and a skill vs both references."""
    t = table[table.method == method]
    ok = pd.Series(True, index=t.index)
    for ref in REFERENCES:
        if f"skill_{ref}" not in t:
            return 0
        ok &= (t[f"pairs_{ref}"].fillna(0) >= min_runs) & t[f"skill_{ref}"].notna()
    return int(ok.sum())


def first_winning_origin(table: pd.DataFrame, method: str, min_runs: int = MIN_RUNS) -> float | None:
    """The earliest origin from which `method`'s skill interval vs both references lies above 0 at every
    later origin (those with at least `min_runs` paired runs and a skill; the others cannot say); None:
    nowhere."""
    t = table[table.method == method].sort_values("origin_step")
    ok = pd.Series(True, index=t.index)
    judged = pd.Series(True, index=t.index)
    for ref in REFERENCES:
        if f"skill_{ref}_lo" not in t:
            return None
        # an origin where the reference is exact (CRPS 0 on every pair) has no ratio: nothing to judge
        judged &= (t[f"pairs_{ref}"].fillna(0) >= min_runs) & t[f"skill_{ref}"].notna()
        ok &= t[f"skill_{ref}_lo"].fillna(-math.inf) > 0
    t = t[judged]
    ok = ok[judged]
    if not len(t) or not ok.iloc[-1]:
        return None
    first = len(ok)
    for i in range(len(ok) - 1, -1, -1):
        if not ok.iloc[i]:
            break
        first = i
    return float(t.origin_step.iloc[first])


def lead_times(fc: pd.DataFrame) -> pd.DataFrame:
    """Per crossing run and method: t50 minus the first origin from which every origin before the crossing
    has a forecast within ±25% of t50 (`lead_within_25`), or covering t50 in its 80% interval
    (`lead_covered_80`); 0 when even the last origin before the crossing does not."""
    rows = []
    crossing = fc[fc.crosses.astype(bool)]
    for (run_id, method), g in crossing.groupby(["run_id", "method"], sort=False):
        t50 = float(g.t50.iloc[0])
        before = g[g.origin_step < t50].sort_values("origin_step")
        row = {"run_id": run_id, "method": method, "t50": t50}
        for name, col in (("lead_within_25", "within_25"), ("lead_covered_80", "covered_80")):
            good = before[col].fillna(False).astype(bool).to_numpy() & before.forecast_made.astype(bool).to_numpy()
            lead = 0.0
            for i in range(len(good) - 1, -1, -1):
                if not good[i]:
                    break
                lead = t50 - float(before.origin_step.iloc[i])
            row[name] = lead
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "method", "t50", "lead_within_25", "lead_covered_80"])


def summary_row(fc: pd.DataFrame, table: pd.DataFrame, primary: str, max_steps: float, name: str,
                seed: int = 0, from_fraction: float = 0.25) -> dict[str, Any]:
    """One line of the per-generator (or study) table for the primary method: where it first beats both
    references, its skill pooled over origins from `from_fraction` of max_steps on, its 80% coverage
    there (the PIT's: pooled, and the lowest and highest per origin; the plain interval's, pooled), Brier
    scores and lead time."""
    late = fc[fc.origin_step >= from_fraction * max_steps]
    first = first_winning_origin(table, primary)
    row: dict[str, Any] = {"generator": name, "method": primary, "runs": fc.run_id.nunique(),
                           "runs_crossing": int(fc.drop_duplicates("run_id").crosses.astype(bool).sum()),
                           "first_winning_origin": first,
                           "first_winning_fraction": None if first is None else first / max_steps,
                           "origins_judged": judged_origins(table, primary)}
    for ref in REFERENCES:
        sk, lo, hi, n = skill(late, primary, ref, seed)
        row.update({f"skill_{ref}": sk, f"skill_{ref}_lo": lo, f"skill_{ref}_hi": hi, f"pairs_{ref}": n})
    mine = late[(late.method == primary) & late.forecast_made.astype(bool)]
    per_origin = table[(table.method == primary) & (table.origin_fraction >= from_fraction)
                       & (table.forecasts >= MIN_RUNS)].coverage_80
    row.update({"forecasts": len(mine), "coverage_80": _mean(mine.pit_coverage_80),
                "interval_coverage_80": _mean(mine.covered_80),
                "coverage_80_min": float(per_origin.min()) if len(per_origin) else math.nan,
                "coverage_80_max": float(per_origin.max()) if len(per_origin) else math.nan})
    for method in (primary, "climatology"):
        m = late[(late.method == method) & late.forecast_made.astype(bool)]
        row[f"brier_{method}" if method != primary else "brier"] = _mean(
            (m.p_cross_by_max_steps - m.crosses.astype(float)) ** 2)
    never = mine[~mine.crosses.astype(bool)]
    row["false_alarm_p"] = _mean(never.p_cross_by_max_steps)
    leads = lead_times(fc[fc.method == primary])
    row["median_lead_within_25"] = float(leads.lead_within_25.median()) if len(leads) else math.nan
    row["median_lead_covered_80"] = float(leads.lead_covered_80.median()) if len(leads) else math.nan
    return row


def _f(v: Any, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _origin_range(r: dict[str, Any]) -> str:
    """'0.62-0.86', or why there is no per-origin range (no origin had MIN_RUNS forecasts)."""
    lo, hi = r["coverage_80_min"], r["coverage_80_max"]
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"no origin with {MIN_RUNS} forecasts"
    return f"{_f(lo)}-{_f(hi)}"


def format_summary(summary: pd.DataFrame, max_steps: float | None = None) -> str:
    """The per-generator table (markdown), as printed, in the README and in the report."""
    lines = ["| generator | runs (crossing) | beats both refs from origin | skill vs linear [95%] | "
             "skill vs climatology [95%] | 80% coverage (per-origin range); interval | Brier (climatology) | "
             "mean p_cross, no-cross runs | median lead ±25% / 80% |",
             "|---|---|---|---|---|---|---|---|---|"]
    several = "method" in summary and summary.method.nunique() > 1
    for r in summary.to_dict("records"):
        label = f"{r['generator']} · {r['method']}" if several else r["generator"]
        first = ("never" if r["first_winning_origin"] is None or pd.isna(r["first_winning_origin"]) else
                 f"step {r['first_winning_origin']:g} ({r['first_winning_fraction']:.2f} of max_steps)")
        lines.append(
            f"| {label} | {r['runs']} ({r['runs_crossing']}) | {first} | {_f(r['skill_linear'])} "
            f"[{_f(r['skill_linear_lo'])}, {_f(r['skill_linear_hi'])}] | {_f(r['skill_climatology'])} "
            f"[{_f(r['skill_climatology_lo'])}, {_f(r['skill_climatology_hi'])}] | {_f(r['coverage_80'])} "
            f"({_origin_range(r)}); {_f(r.get('interval_coverage_80'))} | "
            f"{_f(r['brier'])} "
            f"({_f(r['brier_climatology'])}) | {_f(r['false_alarm_p'])} | {_f(r['median_lead_within_25'], 1)} / "
            f"{_f(r['median_lead_covered_80'], 1)} |")
    return "\n".join(lines)


def format_origins(table: pd.DataFrame, methods: list[str] | None = None) -> str:
    """Per method and origin: CRPS, coverage, Brier and skill (markdown)."""
    t = table if methods is None else table[table.method.isin(methods)]
    lines = ["| method | origin (fraction) | forecasts | CRPS | coverage 50/80/95 | Brier | skill vs linear [95%] | "
             "skill vs climatology [95%] |", "|---|---|---|---|---|---|---|---|"]
    for r in t.to_dict("records"):
        sk = [f"{_f(r.get(f'skill_{ref}'))} [{_f(r.get(f'skill_{ref}_lo'))}, {_f(r.get(f'skill_{ref}_hi'))}]"
              if f"skill_{ref}" in r and not pd.isna(r.get(f"skill_{ref}")) else "—" for ref in REFERENCES]
        name = f"**{r['method']}**" if r["primary"] else r["method"]
        lines.append(f"| {name} | {r['origin_step']:g} ({r['origin_fraction']:.2f}) | {r['forecasts']} | "
                     f"{_f(r['crps'])} | {_f(r['coverage_50'])}/{_f(r['coverage_80'])}/{_f(r['coverage_95'])} | "
                     f"{_f(r['brier'])} | {sk[0]} | {sk[1]} |")
    return "\n".join(lines)


def verdict(summary_row: dict[str, Any], primary: str, where: str) -> str:
    """The plain sentence Q6 leads with, for one study or generator."""
    first = summary_row.get("first_winning_origin")
    judged = summary_row.get("origins_judged")
    basis = "" if judged is None or pd.isna(judged) else \
        f" ({int(judged)} origin(s) with at least {MIN_RUNS} runs to judge)"
    if first is None or pd.isna(first):
        return (f"{where}: `{primary}` does **not** beat both linear extrapolation and climatology with a paired 95% "
                f"interval above zero from any origin{basis}.")
    return (f"{where}: `{primary}` beats both linear extrapolation and climatology (paired 95% intervals above zero) "
            f"from origin step {first:g} ({summary_row['first_winning_fraction']:.2f} of max_steps) on{basis}.")
