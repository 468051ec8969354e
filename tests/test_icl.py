from phaseflip.data import Example
from phaseflip.icl import choose_shots, icl_messages

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
    assert choose_shots(SHOTS, 3, seed=0) == choose_shots(SHOTS, 3, seed=0)
    assert len({s.id for s in choose_shots(SHOTS, 3, seed=0)}) == 3
