import json
from pathlib import Path

import pytest

from phaseflip.config import load_study_config
from phaseflip.data import Example, find_leaks, leak_score, load_examples, load_retention, similarity, subset_per_family
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
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'id' is not valid UTF-8"):
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


# docs/design.md §3 bad input: every error names the file, the line and the field.
@pytest.mark.parametrize(
    ("line2", "needle"),
    [
        ('{"id": "b", "messages": [', "c.jsonl:2: invalid JSON"),
        (json.dumps({"id": "b", "messages": [{"role": "user", "content": "x"}]}),
         "c.jsonl:2: field 'preferred' is missing"),
        (json.dumps({**GOOD, "id": "b", "preferred": ""}), "c.jsonl:2: field 'preferred' is empty"),
        (json.dumps({**GOOD, "id": "b", "messages": [{"role": "user", "content": " "}]}),
         "c.jsonl:2: field 'messages[0].content' is empty"),
        (json.dumps(GOOD), "c.jsonl:2: field 'id' 'a' duplicates line 1"),
        (json.dumps({**GOOD, "id": "b", "messages": [{"role": "bot", "content": "x"}]}),
         "c.jsonl:2: field 'messages[0].role' is 'bot'"),
        (json.dumps({**GOOD, "id": "b", "tags": "coding"}), "c.jsonl:2: field 'tags' must be a list"),
    ],
)
def test_each_bad_input_names_file_line_and_field(tmp_path: Path, line2: str, needle: str) -> None:
    path = write(tmp_path, [GOOD, line2])
    with pytest.raises(DataError) as err:
        load_examples(path, "corrections")
    assert needle in str(err.value)


def test_latin1_bytes_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    bad = json.dumps({**GOOD, "id": "b", "preferred": "Compris — café"}, ensure_ascii=False)
    path.write_bytes((json.dumps(GOOD) + "\n").encode() + (bad + "\n").encode("latin-1", errors="replace"))
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'preferred' is not valid UTF-8"):
        load_examples(path, "corrections")
    retention = tmp_path / "r.jsonl"
    retention.write_bytes('{"id": "r1", "text": "Caf\xe9?"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"r.jsonl:1: field 'text' is not valid UTF-8"):
        load_retention(retention)


BAD_LINES = {
    "invalid_json": b'{"id": "c2", "messages": [\n',
    "missing_field": b'{"id": "c2", "messages": [{"role": "user", "content": "x"}]}\n',
    "empty_text": b'{"id": "c2", "messages": [{"role": "user", "content": "x"}], "preferred": "  "}\n',
    "duplicate_id": b'{"id": "c1", "messages": [{"role": "user", "content": "x"}], "preferred": "y"}\n',
    "unknown_role": b'{"id": "c2", "messages": [{"role": "robot", "content": "x"}], "preferred": "y"}\n',
    "wrong_encoding": '{"id": "c2", "messages": [{"role": "user", "content": "caf\xe9"}], "preferred": "y"}\n'.encode(
        "latin-1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_corrections_stage_writes_nothing_on_bad_input(tmp_path: Path, kind: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.cli import main

    cfg = load_study_config({"study": "smoke"}).model_dump(mode="json")
    for key, rel in cfg["behavior"]["data"].items():
        cfg["behavior"]["data"][key] = str(ROOT / rel)
    bad = tmp_path / "corrections.jsonl"
    good = b'{"id": "c1", "messages": [{"role": "user", "content": "x"}], "preferred": "y"}\n'
    bad.write_bytes(good + BAD_LINES[kind])
    cfg["behavior"]["data"]["corrections"] = str(bad)
    out = tmp_path / "out"
    code = main(["corrections", "--params", json.dumps(cfg), "--base", str(tmp_path / "unused"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err
    assert not out.exists()


def test_leak_check_catches_a_shared_direction_in_a_different_request() -> None:
    ev = Example(id="e1", messages=[{"role": "user", "content":
                 "Compute the mean order value per customer. Pandas only please, don't bring in numpy or SQL."}])
    same_direction = Example(id="c1", messages=[{"role": "user", "content":
                             "Plot monthly revenue from sales.csv. Pandas only please, don't bring in numpy or SQL."}])
    reworded = Example(id="c2", messages=[{"role": "user", "content":
                       "Find the top region by sales. Use pandas only, not numpy or SQL."}])
    unrelated = Example(id="c3", messages=[{"role": "user", "content":
                        "Write a haiku about autumn. Keep it to seventeen syllables exactly."}])
    a, b = same_direction.direction, ev.direction
    assert similarity(a, b) < 0.6 <= leak_score(a, b)  # whole-text similarity alone would miss it
    assert [c for c, _, _ in find_leaks([same_direction, reworded, unrelated], [ev], 0.6)] == ["c1", "c2"]


def test_retention_rows_may_be_chat_messages(tmp_path: Path) -> None:
    """Issue 16, failure 3: `{"id", "messages"}` retention rows are read (their contents are the text)."""
    path = tmp_path / "retention.jsonl"
    path.write_text(json.dumps({"id": "r1", "messages": [{"role": "user", "content": "Name a prime."}]}) + "\n"
                    + json.dumps({"id": "r2", "text": "What is 2 + 2?"}) + "\n")
    assert load_retention(path) == [{"id": "r1", "text": "Name a prime."}, {"id": "r2", "text": "What is 2 + 2?"}]
    path.write_text(json.dumps({"id": "r1", "text": "x y", "messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"retention.jsonl:1: give exactly one of field 'text'"):
        load_retention(path)
    path.write_text(json.dumps({"id": "r1", "messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"retention.jsonl:1: field 'messages\[0\].role'"):
        load_retention(path)


def ex(i: str, text: str) -> Example:
    return Example(id=i, messages=[{"role": "user", "content": text}])


def test_same_question_shape_with_different_content_is_no_leak() -> None:
    """Issue 16, failure 4: prompts that share only a question shape pass the leak check."""
    corrections = [ex("c1", "What's the difference between a mutex and a semaphore?"),
                   ex("c2", "How do I reverse a list in Python?"),
                   ex("c3", "What's the difference between a lake and a pond?")]
    evals = [ex("e1", "What is the difference between GET and POST?"), ex("e2", "How do I sort a dict in Python?"),
             ex("e3", "What is the difference between weather and climate?")]
    assert find_leaks(corrections, evals, 0.6) == []
    # ... while the same content in another shape is still caught.
    leak = ex("c9", "Sort a Python dict by its values: how?")
    assert [(c, e) for c, e, _ in find_leaks([leak], evals, 0.6)] == [("c9", "e2")]


def test_shipped_behaviors_have_no_leaks_at_their_threshold() -> None:
    for name in ["listening", "formal"]:
        cfg = load_study_config({"behavior": name})
        corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
        evals = load_examples(ROOT / cfg.behavior.data.eval, "eval")
        assert find_leaks(corrections, evals, cfg.behavior.leak_threshold) == [], name


def test_formal_behavior_data() -> None:
    """The second shipped behavior: only the three files, no reference replies, chat retention."""
    cfg = load_study_config({"behavior": "formal"})
    folder = ROOT / "data/behaviors/formal"
    assert sorted(p.name for p in folder.iterdir()) == ["corrections.jsonl", "eval.jsonl", "judge_labels.jsonl",
                                                         "retention.jsonl"]
    corrections = load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    evals = load_examples(ROOT / cfg.behavior.data.eval, "eval")
    assert len(corrections) >= 12 and all(c.rejected is None for c in corrections)
    assert len(evals) >= 60 and all(e.preferred is None and e.rejected is None for e in evals)
    for family in ["new_domain", "french", "format_shift", "inverted"]:
        assert sum(e.family == family for e in evals) >= 10
    assert all('"messages"' in line for line in (folder / "retention.jsonl").read_text().splitlines())
    assert len(load_retention(ROOT / cfg.behavior.data.retention)) >= 30
