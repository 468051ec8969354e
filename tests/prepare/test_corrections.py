"""Stage corrections: validate, stop on leaks, fill `rejected`, make reference pairs, write the splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phaseflip.cli import main
from phaseflip.config import load_study_config
from phaseflip.io import DataError
from phaseflip.prepare.corrections import prepare

ROOT = Path(__file__).resolve().parents[2]


def _params(cfg: dict, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    for key, rel in cfg["behavior"]["data"].items():
        if rel is not None:
            cfg["behavior"]["data"][key] = str(ROOT / rel)
    return {k: cfg[k] for k in ("seed", "device", "study", "model", "behavior")}


def test_formal_behavior_needs_only_its_data_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Corrections with `preferred` only, eval prompts without reference replies, chat retention, no vocab."""
    cfg = _params(load_study_config({"behavior": "formal", "study": "smoke"}).model_dump(mode="json"), tmp_path)
    cfg["behavior"]["references"]["max_attempts"] = 1
    cfg["behavior"]["references"]["max_new_tokens"] = 4
    out = tmp_path / "corrections"
    assert main(["corrections", "--params", json.dumps(cfg), "--base", str(tiny_model_dir), "--out", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["rejected_filled"] == report["corrections"] >= 12
    refs = report["references"]
    assert refs["needing_pairs"] == refs["scenarios"] == report["eval"] >= 60
    # A random-weight model's text is garbled: no pair passes the judge, and every such scenario is named.
    assert refs["with_pair"] + len(refs["without_pair"]) == refs["scenarios"]
    assert refs["judged"]["preferred"] == refs["scenarios"]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert all("references" in e["meta"] for e in evals)
    retention = [json.loads(line) for line in (out / "retention.jsonl").read_text().splitlines()]
    assert len(retention) >= 30 and all(set(r) == {"id", "text"} for r in retention)


def test_a_leak_names_its_own_key_and_nothing_is_written(tmp_path: Path) -> None:
    behavior = load_study_config({"study": "smoke"}).behavior
    corrections = (ROOT / behavior.data.corrections).read_text().splitlines()
    first = json.loads(corrections[0])
    leaky = tmp_path / "eval.jsonl"
    leaky.write_text(json.dumps({"id": "e1", "family": "in_distribution", "messages": first["messages"]}) + "\n")
    data = behavior.data.model_copy(update={"corrections": str(ROOT / behavior.data.corrections), "eval": str(leaky),
                                            "retention": str(ROOT / behavior.data.retention)})
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"raise behavior\.leak_threshold \(now 0\.6"):
        prepare(behavior.model_copy(update={"data": data}), out, 0, lambda: pytest.fail("no model needed"),
                lambda: pytest.fail("no judge needed"))
    assert not out.exists()


def test_the_leak_error_names_the_pair(tmp_path: Path) -> None:
    behavior = load_study_config({"study": "smoke"}).behavior
    first = json.loads((ROOT / behavior.data.corrections).read_text().splitlines()[0])
    leaky = tmp_path / "eval.jsonl"
    leaky.write_text(json.dumps({"id": "e1", "family": "in_distribution", "messages": first["messages"]}) + "\n")
    data = behavior.data.model_copy(update={"corrections": str(ROOT / behavior.data.corrections), "eval": str(leaky),
                                            "retention": str(ROOT / behavior.data.retention)})
    with pytest.raises(DataError, match=r"\('c01', 'e1', 1\.0\)"):
        prepare(behavior.model_copy(update={"data": data}), tmp_path / "out", 0, lambda: pytest.fail("no model"),
                lambda: pytest.fail("no judge"))
