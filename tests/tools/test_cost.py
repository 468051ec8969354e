"""The cost model: counts follow the config, FLOPs follow the counts, and the full preset costs more."""

from __future__ import annotations

import pytest

from phaseflip.config import load_study_config
from phaseflip.data import Example
from phaseflip.tools.cost import MEASURED_CPU, cpu_rates, estimate, token_stats, workload


def _count(ex: Example, reply: str | None) -> int:  # words stand in for tokens: fast and deterministic
    return sum(len(m["content"].split()) for m in ex.messages) + len((reply or "").split())


def _work(preset: str):  # type: ignore[no-untyped-def]
    cfg = load_study_config({"study": preset}, check_paths=False)
    return cfg, workload(cfg, token_stats(cfg, _count), n_parameters=1000, n_layers=30)


def test_counts_follow_the_grid() -> None:
    cfg, work = _work("full")
    t = cfg.train
    runs = len(t.lrs) * len(t.n_real) * len(t.dream_k) * len(t.seeds) + 1  # + negative control
    assert work.runs == runs and work.jobs == 2 * runs + 5
    assert work.checkpoints == runs * len(t.checkpoint_steps)
    assert work.train_steps == runs * t.max_steps
    # base, the screen's full evaluations (2 training sets x 3), ICL
    assert work.eval_passes == work.checkpoints + 1 + 2 * 3 + len(cfg.icl.ks)
    assert work.train_flops == 6.0 * 1000 * work.train_tokens
    assert work.eval_flops == 2.0 * 1000 * (work.eval_forward_tokens + work.sampled_tokens)


def test_cpu_rates_reproduce_the_measured_default_jobs() -> None:
    _, default = _work("default")
    rates = cpu_rates(default)
    per_run_train_s = default.train_flops / default.runs / rates["train_flops_per_s"] + MEASURED_CPU["job_startup_s"]
    assert per_run_train_s == pytest.approx(MEASURED_CPU["train_job_s"])


def test_full_costs_more_than_default_and_gpu_is_faster() -> None:
    _, default = _work("default")
    _, full = _work("full")
    rates = cpu_rates(default)
    small, big = estimate(default, rates), estimate(full, rates)
    assert big["cpu_core_hours"] > 50 * small["cpu_core_hours"]
    assert big["cpu_wall_hours_2_cores"] == pytest.approx(big["cpu_core_hours"] / 2)
    assert 0 < big["gpu_hours"] < big["cpu_wall_hours_2_cores"]
    assert big["gpu_hours"] >= big["gpu_hours_train"] + big["gpu_hours_sampling"]
