"""The pilot's decisions (crossing, next probe, grid, checkpoints), validated on simulated probes drawn from
curves outside its own assumptions (a floor and a ceiling, beta != 1, binomial noise), and its training hook."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phaseflip.config import PilotConfig, TrainConfig, load_study_config
from phaseflip.data import Example
from phaseflip.interventions.pilot import (
    Probe,
    auto_checkpoints,
    choose_grid,
    crossing,
    next_probe_lr,
    read_grid,
    run_pilot,
)
from phaseflip.interventions.train import RunSpec, checkpoints, grid, lr_text, train_run
from phaseflip.io import DataError, write_json

EXAMPLES = [Example(id=f"c{i}", messages=[{"role": "user", "content": f"Task {i}: use tabs."}],
                    preferred=f"Understood: tabs only for task {i}.") for i in range(4)]


def train_cfg(**changes: object) -> TrainConfig:
    base = load_study_config({"study": "smoke"}).train.model_dump()
    base.update({"max_steps": 16, "checkpoint_steps": "auto", "lrs": "auto", "pilot": PilotConfig().model_dump(),
                 **changes})
    return TrainConfig.model_validate(base)


def test_crossing_is_monotone_and_interpolated_between_the_bracketing_steps() -> None:
    # a noisy dip (0.5 then 0.3) is pooled by the isotonic fit: 0.4 at steps 2-3, crossing 0.5 between 3 and 4
    assert crossing([0, 1, 2, 3, 4], [1, 2, 5, 3, 8], [10] * 5, 0.5) == pytest.approx(3 + (0.5 - 0.4) / (0.8 - 0.4))
    assert crossing([0, 1, 2], [0, 1, 2], [10] * 3, 0.5) is None
    assert crossing([0, 1], [6, 9], [10, 10], 0.5) == 0.0


def test_next_probe_moves_towards_the_window_and_stops_inside_it() -> None:
    cfg = PilotConfig(start_lr=2e-3, factor=4, max_probes=3, window=(0.25, 0.75), beta=1.0)
    assert next_probe_lr([], cfg, 0.5, 16) == 2e-3
    never = Probe(2e-3, [0, 16], [0, 1], [10, 10])
    assert next_probe_lr([never], cfg, 0.5, 16) == pytest.approx(8e-3)  # no crossing: x factor
    too_fast = Probe(2e-3, [0, 1], [0, 10], [10, 10])  # crossed within the first step
    assert next_probe_lr([too_fast], cfg, 0.5, 16) == pytest.approx(5e-4)
    late = Probe(2e-3, [0, 13, 14], [0, 4, 6], [10, 10, 10])  # crosses at 13.5, target 8: lr x 13.5/8
    assert next_probe_lr([late], cfg, 0.5, 16) == pytest.approx(float(f"{2e-3 * 13.5 / 8:.1e}"))
    inside = Probe(2e-3, [0, 7, 8], [0, 4, 6], [10, 10, 10])
    assert next_probe_lr([inside], cfg, 0.5, 16) is None
    assert next_probe_lr([never, never, never], cfg, 0.5, 16) is None  # max_probes


def test_grid_from_two_crossings_measures_beta_and_hits_the_targets() -> None:
    beta = 0.7  # true t50 = 10 * (3e-3 / lr)^0.7
    probes = []
    for lr in (2e-3, 4e-3):
        t = 10 * (3e-3 / lr) ** beta
        steps = [0, math.floor(t), math.floor(t) + 1]
        frac = t - math.floor(t)  # linear between the bracketing steps: rate 0.5 exactly at t
        probes.append(Probe(lr, steps, [0, round(100 * (0.5 - 0.5 * frac)), round(100 * (1 - 0.5 * frac))],
                            [100, 100, 100]))
    choice = choose_grid(probes, train_cfg(), 0.5)
    assert choice.chosen_by == "pilot" and choice.beta_source == "measured"
    assert choice.beta == pytest.approx(beta, abs=0.05)
    for lr, target in zip(choice.lrs, (0.6, 0.4), strict=True):
        truth = 10 * (3e-3 / lr) ** beta
        assert truth == pytest.approx(target * 16, rel=0.08)
    assert choice.checkpoint_steps is not None and choice.checkpoint_steps[-1] == 16


def test_nothing_crossing_falls_back_to_the_probes_and_says_so() -> None:
    probes = [Probe(1e-2, [0, 1, 2], [0, 0, 0], [4, 4, 4])]
    choice = choose_grid(probes, train_cfg(max_steps=4), 0.5)
    assert choice.chosen_by == "fallback" and choice.lrs == [1e-2] and "no probe crossed" in choice.note
    explicit = choose_grid(probes, train_cfg(max_steps=4, lrs=[3e-3]), 0.5)
    assert explicit.chosen_by == "config" and explicit.lrs == [3e-3]


@pytest.mark.parametrize("n, predicted", [(5, [6.4, 9.6]), (5, [3.0]), (5, [15.0]), (4, [1.0, 2.0]), (5, []),
                                         (5, [9.7, 6.4]), (6, [5.0, 11.0])])
def test_auto_checkpoints_bracket_the_predicted_crossings_within_the_budget(n: int, predicted: list[float]) -> None:
    steps = auto_checkpoints(predicted, 16, n, early=4.0)
    assert len(steps) == n and steps == sorted(set(steps)) and steps[-1] == 16 and steps[0] >= 1
    # any crossing inside the window (from step 4 on) has two forecast origins before it
    assert len([s for s in steps if s < 4]) >= 2
    for t in predicted:
        assert any(s >= t for s in steps)  # a checkpoint after each predicted crossing
        if t > 4:  # and one near it (10% of it, rounded to a step): the crossing is bracketed closely
            assert any(abs(s - t) <= max(1.0, 0.15 * t) for s in steps[:-1]), (t, steps)


def simulated_probe(scale: float, beta: float, floor: float, ceiling: float, seed: int, max_steps: int = 16,
                    scenarios: int = 12, replies: int = 2):
    """Probe runs from a curve the pilot does not assume: rate = floor + (ceiling - floor) * logistic, whose
    true 0.5-crossing is t50(lr) = scale * lr^-beta; 24 binomial replies per step; stops like the real one."""
    rng = np.random.default_rng(seed)
    width = 1.5

    def probe(lr: float) -> Probe:
        t50 = scale * lr ** -beta
        # the logistic's midpoint placed so the floor/ceiling curve crosses 0.5 at t50
        mid = t50 - width * math.log((0.5 - floor) / (ceiling - 0.5))
        p = Probe(lr)
        for step in range(max_steps + 1):
            rate = floor + (ceiling - floor) / (1 + math.exp(-(step - mid) / width))
            p.add(step, int(rng.binomial(scenarios * replies, rate)), scenarios * replies, math.nan)
            if step and p.above(0.5, PilotConfig().above_steps):
                break
        return p

    return probe


@pytest.mark.parametrize("scale_at_2e3, beta, floor, ceiling",
                         [(14.0, 0.7, 0.05, 0.95), (1.7, 1.3, 0.25, 0.9), (40.0, 1.0, 0.0, 1.0), (0.6, 0.8, 0.1, 1.0)])
def test_pilot_places_true_crossings_mid_budget_on_curves_outside_its_model(scale_at_2e3: float, beta: float,
                                                                            floor: float, ceiling: float) -> None:
    train = train_cfg()
    scale = scale_at_2e3 * 2e-3 ** beta  # t50 at the first probe (2e-3): from 0.6 to 40 steps
    inside = 0
    for seed in range(5):
        _, choice = run_pilot(simulated_probe(scale, beta, floor, ceiling, seed), train, 0.5, say=lambda _: None)
        truth = [scale * lr ** -beta for lr in choice.lrs]
        inside += all(0.25 * 16 <= t <= 0.75 * 16 for t in truth)
    assert inside >= 4, f"true t50s inside [4, 12] in only {inside} of 5 simulated pilots"


def test_grid_resolves_main_and_auto_needs_the_pilots_lrs() -> None:
    cfg = train_cfg(extra_runs=[{"lr": "main", "n_real": 4, "dream_k": 0}], seeds=[0])
    with pytest.raises(DataError, match="pilot"):
        grid(cfg)
    ids = [r.run_id for r in grid(cfg, [4.5e-3, 3e-3])]
    assert ids[:2] == ["lr4.5e-03_nall_k0_s0", "lr3e-03_nall_k0_s0"]
    assert "lr4.5e-03_n4_k0_s0" in ids and ids[-1].startswith("control-own-replies_lr4.5e-03")
    assert float(lr_text(4.5e-3)) == 4.5e-3 and lr_text(3e-3) == "3e-03"


def test_read_grid_names_the_bad_field(tmp_path: Path) -> None:
    write_json(tmp_path / "grid.json", {"lrs": [], "checkpoint_steps": None})
    with pytest.raises(DataError, match="'lrs'"):
        read_grid(tmp_path / "grid.json")
    write_json(tmp_path / "grid.json", {"lrs": [1e-3], "checkpoint_steps": [0.5]})
    with pytest.raises(DataError, match="'checkpoint_steps'"):
        read_grid(tmp_path / "grid.json")


def test_auto_checkpoints_save_every_step_and_a_hook_can_stop_the_run(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    seen: list[int] = []

    def on_step(step: int, _model: object) -> bool:
        seen.append(step)
        return step == 3

    cfg = train_cfg(max_steps=6)
    summary = train_run(model, tok, EXAMPLES, RunSpec(1e-2, "all", 0, 0), cfg, tmp_path, on_step=on_step)
    assert summary["status"] == "stopped" and seen == [1, 2, 3]
    assert [s for s, _ in checkpoints(tmp_path)] == [1, 2, 3]
    # the optimizer state stays only where a resume can read it: the newest two checkpoints
    assert [s for s, p in checkpoints(tmp_path) if (p / "optimizer.safetensors").is_file()] == [2, 3]
    assert list(pd.read_csv(tmp_path / "train_log.csv").step) == [1, 2, 3]


def test_evaluation_reads_the_placed_checkpoints_and_the_runs_last(tmp_path: Path) -> None:
    from phaseflip.config import ConfigError, TrainRecipe
    from phaseflip.stages.evaluate import evaluated_checkpoints

    found = [(s, tmp_path / f"step-{s:04d}") for s in range(1, 8)]  # a run that diverged after step 7
    write_json(tmp_path / "grid.json", {"lrs": [1e-3], "checkpoint_steps": [2, 5, 9, 16]})
    auto = TrainRecipe.of(train_cfg().model_dump(mode="json"))
    assert [s for s, _ in evaluated_checkpoints(found, auto, str(tmp_path / "grid.json"))] == [2, 5, 7]
    fixed = TrainRecipe.of(train_cfg(checkpoint_steps=[2, 4]).model_dump(mode="json"))
    assert evaluated_checkpoints(found, fixed, None) == found  # a list: what was saved is what is evaluated
    with pytest.raises(ConfigError, match="--grid"):
        evaluated_checkpoints(found, auto, None)


def test_pilot_scenarios_are_in_distribution_with_reference_pairs_first() -> None:
    from phaseflip.stages.pilot import pilot_scenarios

    def ex(i: int, family: str, paired: bool) -> Example:
        return Example(id=f"e{i}", family=family, messages=[{"role": "user", "content": f"q {i}"}],
                       preferred="yes" if paired else None, rejected="no" if paired else None)

    chosen = pilot_scenarios([ex(0, "in_distribution", False), ex(1, "french", True), ex(2, "in_distribution", True),
                              ex(3, "in_distribution", True)], 2)
    assert [e.id for e in chosen] == ["e2", "e3"]
    with pytest.raises(DataError, match="in-distribution"):
        pilot_scenarios([ex(1, "french", True)], 2)


def test_a_base_model_already_above_the_threshold_ends_the_pilot_with_a_fallback() -> None:
    above = Probe(4e-3, [0, 1, 2], [20, 21, 22], [24, 24, 24])  # 0.83 at step 0: Wilson [0.64, 0.93]
    assert next_probe_lr([above], PilotConfig(), 0.5, 16) is None
    choice = choose_grid([above], train_cfg(), 0.5)
    assert choice.chosen_by == "fallback" and choice.lrs == [4e-3] and "already at or above" in choice.note


def test_a_diverged_probe_moves_the_next_one_down_and_is_not_a_fallback_lr() -> None:
    blown = Probe(4e-3, [0, 1, 2], [0, 0, 0], [24, 24, 24], status="diverged")
    assert next_probe_lr([blown], PilotConfig(), 0.5, 16) == pytest.approx(1e-3)
    flat = Probe(1e-3, [0, 16], [0, 0], [24, 24])
    assert choose_grid([blown, flat], train_cfg(), 0.5).lrs == [1e-3]


def test_a_base_rate_near_the_threshold_is_not_taken_for_already_above() -> None:
    near = Probe(4e-3, [0, 1, 2], [14, 18, 20], [24, 24, 24])  # 0.58 at step 0: Wilson [0.39, 0.76]
    assert not near.base_above(0.5)


def unstable_probe(scale: float, lr_falls: float, seed: int, max_steps: int = 16, replies: int = 24):
    """Probes whose rate rises past 0.5 at t50 = scale / lr and, above `lr_falls`, peaks at 0.68 one step later
    and falls back to 0.15 (the behavior does not hold: tldr on SmolLM2 did this); 24 binomial replies a step."""
    rng = np.random.default_rng(seed)

    def probe(lr: float) -> Probe:
        t50 = scale / lr
        p = Probe(lr)
        for step in range(max_steps + 1):
            rate = 1 / (1 + math.exp(-(step - t50) / 1.3))
            if lr > lr_falls and step > t50 + 1:
                rate = 0.15 + (0.68 - 0.15) * math.exp(-(step - t50 - 1) / 1.0)
            p.add(step, int(rng.binomial(replies, rate)), replies, math.nan)
            if step and p.above(0.5, PilotConfig().above_steps):
                break
        return p

    return probe


def test_a_rate_that_rose_and_fell_is_read_on_its_rise_and_moves_the_probe_down() -> None:
    fell = Probe(4e-3, list(range(9)), [0, 0, 1, 6, 13, 18, 9, 4, 3], [24] * 9)  # peak 0.75 at step 5, then 0.14
    assert fell.rose_and_fell(0.5)
    assert fell.t50(0.5) == pytest.approx(crossing(fell.steps[:6], fell.k[:6], fell.n[:6], 0.5))
    assert next_probe_lr([fell], PilotConfig(), 0.5, 16) == pytest.approx(2e-3)  # / sqrt(factor)
    noisy = Probe(4e-3, list(range(9)), [8, 10, 9, 13, 9, 10, 8, 9, 9], [24] * 9)  # flat near 0.4: no fall
    assert not noisy.rose_and_fell(0.5)
    held = Probe(2e-3, [0, 9, 10, 11], [0, 10, 14, 16], [24] * 4)
    choice = choose_grid([fell, held], train_cfg(), 0.5)
    assert max(choice.lrs) < math.sqrt(2e-3 * 4e-3) and choice.reference == {"lr": 2e-3, "t50": held.t50(0.5)}
    assert "fell back" in choice.note


def test_pilot_steps_below_an_lr_where_the_behavior_does_not_hold() -> None:
    """Simulated: above lr 3e-3 the rate rises past 0.5 and falls back; the first probe (4e-3) does so. The
    grid's lrs stay where it holds and their true crossings land inside [4, 12] in at least 4 of 5 pilots."""
    train = train_cfg(pilot=PilotConfig(start_lr=4e-3).model_dump())
    good = 0
    for seed in range(5):
        _, choice = run_pilot(unstable_probe(5 * 4e-3, 3e-3, seed), train, 0.5, say=lambda _: None)
        good += all(lr <= 3e-3 and 4 <= 5 * 4e-3 / lr <= 12 for lr in choice.lrs)
    assert good >= 4, f"only {good} of 5 simulated pilots placed a stable grid mid-budget"


def test_a_fall_with_no_slower_crossing_in_the_budget_says_what_budget_would_do() -> None:
    fell = Probe(8e-3, list(range(16)), [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 8, 18, 10, 5, 3, 3], [24] * 16)
    slow = Probe(4e-3, list(range(17)), [0] * 17, [24] * 17)
    choice = choose_grid([fell, slow], train_cfg(), 0.5)  # rise at 10.4 -> 21 at half the lr (beta 1)
    assert "expected near step 21" in choice.note and "train.max_steps >= 42" in choice.note
    assert max(choice.lrs) < 8e-3
    # tldr on SmolLM2: 1.6e-2 rose to 0.71 at step 7 and fell to 0; 8e-3 ran all 16 steps without crossing,
    # past the 12.6 that beta 1 predicts, so the budget asked for is beyond what that probe saw
    rates = [0, 0, 0, 0, 0, 3, 10, 17, 0, 0, 11, 6, 5, 8, 4, 6, 0]
    tldr_fell = Probe(1.6e-2, list(range(17)), rates, [24] * 17)
    tldr_slow = Probe(8e-3, list(range(17)), [0, 0, 0, 5, 9, 1, 1, 3, 1, 1, 2, 1, 1, 3, 1, 2, 2], [24] * 17)
    assert tldr_fell.rose_and_fell(0.5) and not tldr_slow.rose_and_fell(0.5)
    seen = choose_grid([tldr_fell, tldr_slow], train_cfg(), 0.5)
    assert "not reached by step 16" in seen.note and "train.max_steps >= 34" in seen.note
