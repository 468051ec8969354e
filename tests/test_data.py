import json
from pathlib import Path

import pytest

from phaseflip.config import load_study_config
from phaseflip.data import Example, find_leaks, load_examples, load_retention, subset_per_family
from phaseflip.io import DataError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"id": "a", "messages": [{"role": "user", "content": "Use tabs."}], "preferred": "Understood — tabs."}


def write(tmp_path: Path, lines: list[str | dict], name: str = "c.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json", "c.jsonl:2: invalid JSON"),
        ({"id": "b", "messages": [{"role": "user", "content": "x"}]}, "c.jsonl:2: field 'preferred' is missing"),
        ({**GOOD, "id": "b", "preferred": "   "}, "c.jsonl:2: field 'preferred' is empty"),
        ({**GOOD}, "c.jsonl:2: field 'id' 'a' duplicates line 1"),
        ({**GOOD, "id": "b", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role' is 'robot'"),
        ({**GOOD, "id": "b", "messages": []}, "c.jsonl:2: field 'messages'"),
        ({**GOOD, "id": "b", "colour": "red"}, "unknown field(s) ['colour']"),
        ([1, 2], "c.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_corrections_name_file_line_and_field(tmp_path: Path, bad: object, needle: str) -> None:
    path = write(tmp_path, [GOOD, bad if isinstance(bad, (str, dict)) else json.dumps(bad)])
    with pytest.raises(DataError) as err:
        load_examples(path, "corrections")
    assert needle in str(err.value)


def test_wrong_encoding_is_reported_with_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode() + '{"id": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"c.jsonl:2: not valid UTF-8"):
        load_examples(path, "corrections")


def test_eval_needs_a_known_family(tmp_path: Path) -> None:
    path = write(tmp_path, [{**GOOD, "family": "martian"}], "e.jsonl")
    with pytest.raises(DataError, match="field 'family' is 'martian'"):
        load_examples(path, "eval")


def test_shipped_listening_data_is_valid_and_large_enough() -> None:
    cfg = load_study_config({"study": "smoke"})
    corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    evals = load_examples(ROOT / cfg.behavior.data.eval, "eval")
    assert len(corrections) >= 12
    assert len(evals) >= 60
    assert len(load_retention(ROOT / cfg.behavior.data.retention)) >= 30
    for family in ["new_domain", "french", "format_shift", "inverted"]:
        assert sum(e.family == family for e in evals) >= 10


def test_no_eval_scenario_leaks_from_the_corrections() -> None:
    cfg = load_study_config({"study": "smoke"})
    corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    evals = load_examples(ROOT / cfg.behavior.data.eval, "eval")
    assert find_leaks(corrections, evals, cfg.dreams.near_duplicate_threshold) == []


def test_a_planted_leak_is_caught() -> None:
    ev = Example(id="e1", messages=[{"role": "user", "content": "Plot it with matplotlib only, no seaborn."}])
    leak = Example(id="c1", messages=[{"role": "user", "content": "plot it with matplotlib only,  no seaborn"}])
    other = Example(id="c2", messages=[{"role": "user", "content": "Translate this poem to Spanish."}])
    assert [(c, e) for c, e, _ in find_leaks([leak, other], [ev], 0.6)] == [("c1", "e1")]


def test_subset_per_family_is_deterministic_first_n() -> None:
    exs = [Example(id=str(i), messages=GOOD["messages"], family=f) for i, f in enumerate("aabbb")]
    assert [e.id for e in subset_per_family(exs, 1)] == ["0", "2"]
    assert len(subset_per_family(exs, None)) == 5
    assert [e.id for e in subset_per_family(exs, {"b": 2, "default": 1})] == ["0", "2", "3"]
    assert [e.id for e in subset_per_family(exs, {"b": 1})] == ["0", "1", "2"]
