from phaseflip.data import Example
from phaseflip.interventions.icl import icl_messages, icl_shots

SHOTS = [Example(id=f"c{i}", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": f"u{i}"}],
                 preferred=f"p{i}") for i in range(5)]


def test_shots_go_after_the_system_prompt_and_before_the_scenario() -> None:
    scenario = Example(id="e", messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    msgs = icl_messages(SHOTS[:2], scenario)
    assert msgs == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u0"}, {"role": "assistant", "content": "p0"},
        {"role": "user", "content": "u1"}, {"role": "assistant", "content": "p1"},
        {"role": "user", "content": "Q"},
    ]


def test_k0_is_the_scenario_itself_and_choice_is_seeded() -> None:
    scenario = Example(id="e", messages=[{"role": "user", "content": "Q"}])
    assert icl_messages([], scenario) == scenario.messages
    assert icl_shots(SHOTS, 3, seed=0) == icl_shots(SHOTS, 3, seed=0)
    assert len({s.id for s in icl_shots(SHOTS, 3, seed=0)}) == 3


def test_shots_are_nested_across_k_and_all_is_every_correction() -> None:
    import pytest

    from phaseflip.config import ConfigError
    from phaseflip.interventions.icl import resolve_k

    one, three = icl_shots(SHOTS, 1, seed=0), icl_shots(SHOTS, 3, seed=0)
    assert three[:1] == one  # the first k of one seeded order
    everything = icl_shots(SHOTS, resolve_k("all", len(SHOTS)), seed=0)
    assert sorted(s.id for s in everything) == sorted(s.id for s in SHOTS) and everything[:3] == three
    assert [s.id for s in icl_shots(SHOTS, 5, seed=1)] != [s.id for s in everything]  # the seed matters
    with pytest.raises(ConfigError, match="exceeds the 5 corrections"):
        resolve_k(6, len(SHOTS))


def test_icl_prompts_share_their_shot_prefix(tiny) -> None:  # type: ignore[no-untyped-def]
    """All chat scenarios of one k start with the same tokens: the prefix `score_and_sample` encodes once."""
    from phaseflip.interventions.icl import icl_prompt
    from phaseflip.model.scoring import MIN_SHARED_PREFIX, _prefix_groups

    _, tok = tiny
    long_shots = [Example(id=f"c{i}", messages=[{"role": "user", "content": f"Please write task {i} with tabs."}],
                          preferred=f"Understood: task {i}, tabs only.") for i in range(5)]
    scenarios = [Example(id=f"e{i}", messages=[{"role": "user", "content": f"Q{i}"}]) for i in range(3)]
    rows = [tok(icl_prompt(tok, long_shots, s), add_special_tokens=False).input_ids for s in scenarios]
    ((shared, members),) = _prefix_groups(rows, MIN_SHARED_PREFIX)
    assert sorted(members) == [0, 1, 2] and shared >= MIN_SHARED_PREFIX


class _Evaluator:
    """Stands in for the Evaluator: one behavior_rate row per call, recording what was sampled."""

    def __init__(self) -> None:
        self.previous = None
        self.calls: list[str] = []
        self.prompt_fns: dict[int, object] = {}

    def evaluate(self, model, step, prompt_fn, retention, sample):  # type: ignore[no-untyped-def]
        self.calls.append(sample)
        shots = prompt_fn.args[1]  # partial(icl_prompt, tokenizer, shots)
        self.prompt_fns[step] = prompt_fn
        return [{"step": step, "family": "in_distribution", "metric": "behavior_rate", "value": len(shots) / 10}]

    def sample_ood(self, model, step, prompt_fn):  # type: ignore[no-untyped-def]
        assert prompt_fn is self.prompt_fns[step]  # the other families are added to the best k's own step
        self.calls.append(f"ood {step}")
        return [{"step": step, "family": "all", "metric": "behavior_rate", "value": 0.5},
                {"step": step, "family": "in_distribution", "metric": "behavior_rate", "value": 0.5}]


def test_icl_table_reuses_the_base_rows_for_k0_and_samples_every_family_at_the_best_k_only() -> None:
    from phaseflip.interventions.icl import icl_table, resolve_ks

    ks = resolve_ks([0, 1, "all", 3, 1], len(SHOTS))
    assert ks == [0, 1, 3, 5]
    base = [{"step": 0, "family": "in_distribution", "metric": "behavior_rate", "value": 0.05}]
    evaluator = _Evaluator()
    rows, shots = icl_table(evaluator, None, None, SHOTS, ks, 0, base)  # type: ignore[arg-type]
    assert rows[0] == dict(base[0], k=0)  # the base model's own row, not recomputed
    # k = 1, 3, 5 in-distribution, then the other families added to the best (5), not a second evaluation
    assert evaluator.calls == ["in_distribution"] * 3 + ["ood 5"]
    assert {r["step"] for r in rows} == {0}  # every k is the base model's weights
    at_best = [r for r in rows if r["k"] == 5]  # the recomputed aggregate replaces the k's rows, once each
    assert sorted((r["family"], r["value"]) for r in at_best) == [("all", 0.5), ("in_distribution", 0.5)]
    assert sorted(shots) == [0, 1, 3, 5] and shots[0] == [] and len(shots[5]) == 5
    without_zero, _ = icl_table(_Evaluator(), None, None, SHOTS, [1], 0, base)  # type: ignore[arg-type]
    assert {r["k"] for r in without_zero} == {1}  # no k=0 row without 0 in ks
