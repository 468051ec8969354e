"""Each setup's best setting chosen on half the in-distribution scenarios and read on the other half
(`stats.selection`): LoRA's checkpoints, steering's fully evaluated settings and ICL's numbers of shots
under one rule, so Q4 and Q5 compare rates that carry no winner's curse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from phaseflip.data import IN_DISTRIBUTION
from phaseflip.stats.intervals import clustered_interval
from phaseflip.stats.selection import HeldOutSelection, held_out_selection, split_scenarios


@dataclass
class HeldOut:
    """The split and each setup's held-out choice (setup label -> selection); `base`: the base model's rate
    on the report half, (rate, lo, hi)."""
    seed: int
    selection_scenarios: int
    report_scenarios: int
    choices: dict[str, HeldOutSelection] = field(default_factory=dict)
    base: tuple[float, float, float] | None = None
    base_counts: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # report half: scenario_id, k, n


def _in_distribution(table: pd.DataFrame) -> pd.DataFrame:
    t = table[(table.family == IN_DISTRIBUTION) & (table.n > 0)] if "family" in table else table[table.n > 0]
    return t.rename(columns={"behavior_k": "k"})


def held_out_choices(counts: dict[str, pd.DataFrame], lora_candidates: pd.DataFrame, steering: pd.DataFrame | None,
                     icl: pd.DataFrame | None, seed: int) -> HeldOut | None:
    """`counts`: run_id -> that run's in-distribution counts (step, scenario_id, k, n); `lora_candidates`:
    the (run_id, step) pairs LoRA's best is chosen among; `steering` / `icl`: the baselines' per-scenario
    tables (`steering_scenarios.csv`: training_set, layer, multiplier; `icl_scenarios.csv`: shots), None or
    empty when the stage did not write them. None when there are fewer than 4 scenarios to split."""
    lora = pd.concat([c.assign(run_id=run_id) for run_id, c in counts.items()], ignore_index=True) \
        if counts else pd.DataFrame(columns=["run_id", "step", "scenario_id", "k", "n"])
    base = lora[lora.step == 0].drop_duplicates("scenario_id")  # every run starts from the same base model
    lora = lora.merge(lora_candidates[["run_id", "step"]].drop_duplicates(), on=["run_id", "step"])
    tables: dict[str, tuple[pd.DataFrame, list[str]]] = {"LoRA": (lora, ["run_id", "step"])}
    if steering is not None and len(steering):
        tables["steering"] = (_in_distribution(steering[steering.layer >= 0]), ["training_set", "layer", "multiplier"])
    if icl is not None and len(icl):
        tables["ICL"] = (_in_distribution(icl[icl.shots > 0]), ["shots"])
    ids = set(base.scenario_id.astype(str)).union(*(set(t.scenario_id.astype(str)) for t, _ in tables.values()))
    if len(ids) < 4:
        return None
    selection, report = split_scenarios(sorted(ids), seed)
    out = HeldOut(seed, len(selection), len(report))
    for setup, (table, keys) in tables.items():
        chosen = held_out_selection(table, keys, selection, report) if len(table) else None
        if chosen is not None:
            out.choices[setup] = chosen
    rep = base[base.scenario_id.astype(str).isin(set(report))]
    if len(rep):
        k, n = rep.k.astype(int).tolist(), rep.n.astype(int).tolist()
        out.base = (sum(k) / sum(n), *clustered_interval(k, n))
        out.base_counts = rep.assign(scenario_id=rep.scenario_id.astype(str))[["scenario_id", "k", "n"]]
    return out


def label(setup: str, choice: dict[str, Any]) -> str:
    """The chosen setting in the words the report's other tables use."""
    if setup == "LoRA":
        return f"LoRA {choice['run_id']} step {int(choice['step'])}"
    if setup == "steering":
        return f"steering {choice['training_set']} L{int(choice['layer'])} x{float(choice['multiplier']):g}"
    return f"ICL k={int(choice['shots'])}"
