"""The rubric judge against hand-written labels (docs/design.md §6): >= 95% agreement, printed per family and source."""

from pathlib import Path

import pytest

from phaseflip.config import PROJECT_ROOT, load_study_config
from phaseflip.data import FAMILIES
from phaseflip.io import DataError
from phaseflip.measure.judge import RubricJudge
from phaseflip.tools.judge_agreement import (
    agreement,
    agreement_table,
    default_labels_path,
    load_labels,
    main,
    rubric_predictions,
)


@pytest.fixture(scope="module")
def labels():  # type: ignore[no-untyped-def]
    cfg = load_study_config({"study": "smoke"})
    return load_labels(default_labels_path(PROJECT_ROOT, cfg.behavior.data.eval)), RubricJudge(cfg.behavior.judge)


def test_labeled_set_covers_every_family_and_both_classes(labels) -> None:  # type: ignore[no-untyped-def]
    records, _ = labels
    assert len(records) >= 80
    assert {r.family for r in records} == FAMILIES
    assert {r.source for r in records} <= {"hand", "smollm2_base", "smollm2_prompted"}
    real = [r for r in records if r.source.startswith("smollm2_")]
    assert len(real) >= 50
    assert {r.source for r in real} == {"smollm2_base", "smollm2_prompted"}
    for family in FAMILIES:
        assert {r.label for r in records if r.family == family} == {True, False}, family


def test_rubric_judge_agrees_with_the_labels(labels) -> None:  # type: ignore[no-untyped-def]
    records, judge = labels
    result = agreement(rubric_predictions(judge, records), records)
    print("\n" + agreement_table("rubric judge", result))
    assert result["overall"]["agreement"] >= 0.95


def test_agreement_counts() -> None:
    from phaseflip.tools.judge_agreement import Labeled

    recs = [Labeled(str(i), f, "hand", "p", "r", y) for i, (f, y) in enumerate(
        [("french", True), ("french", False), ("inverted", True), ("inverted", False)])]
    result = agreement([True, True, False, False], recs)
    assert result["overall"] == {"n": 4, "agreement": 0.5, "tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert result["per_family"]["french"]["agreement"] == 0.5


def test_command_prints_the_table_and_rejects_bad_labels(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["study=smoke", "--json", str(tmp_path / "a.json")]) == 0
    assert "rubric judge: agreement" in capsys.readouterr().out
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"id": "x", "family": "french", "source": "hand", "prompt": "p", "reply": "r", "label": "yes"}\n')
    assert main(["--labels", str(bad)]) == 2
    assert "labels.jsonl:1: field 'label'" in capsys.readouterr().err
    with pytest.raises(DataError):
        load_labels(bad)


def test_formal_rubric_agrees_with_its_own_labels() -> None:
    """The second shipped behavior has its own labeled replies: every family, both classes, >= 95%."""
    cfg = load_study_config({"behavior": "formal"})
    records = load_labels(default_labels_path(PROJECT_ROOT, cfg.behavior.data.eval))
    assert len(records) >= 40 and {r.family for r in records} == FAMILIES
    for family in FAMILIES:
        assert {r.label for r in records if r.family == family} == {True, False}, family
    result = agreement(rubric_predictions(RubricJudge(cfg.behavior.judge), records), records)
    print("\n" + agreement_table("formal rubric judge", result))
    assert result["overall"]["agreement"] >= 0.95
