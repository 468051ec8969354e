from pathlib import Path

import pytest

from phaseflip.config import DreamsConfig, load_study_config
from phaseflip.data import Example, load_examples
from phaseflip.dreams import generate_dreams, load_vocab
from phaseflip.io import DataError
from phaseflip.judge import RubricJudge

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    cfg = load_study_config({"study": "smoke"})
    data = cfg.behavior.data
    return (load_examples(ROOT / data.corrections, "corrections"), load_examples(ROOT / data.eval, "eval"),
            load_vocab(ROOT / data.dream_vocab), RubricJudge(cfg.behavior.judge))


def test_k_dreams_per_correction_with_provenance(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    dreams, report = generate_dreams(corrections, evals, vocab, judge, DreamsConfig(k_per_correction=3), seed=0)
    assert report["counts"]["kept"] == len(dreams) == 3 * len(corrections)
    for d in dreams:
        assert d.meta["generator"] == "template" and d.meta["seed"] == 0
        assert d.meta["parent"] in {c.id for c in corrections}
        assert all(d.meta["filters"].values())
        assert judge(d.preferred or "").behavior and not judge(d.rejected or "").behavior
    assert report["counts"]["generated"] == report["counts"]["kept"] + sum(
        v for k, v in report["counts"].items() if k.startswith("dropped_"))


def test_dreams_are_deterministic_and_k0_gives_none(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    a, _ = generate_dreams(corrections, evals, vocab, judge, DreamsConfig(k_per_correction=2), seed=1)
    b, _ = generate_dreams(corrections, evals, vocab, judge, DreamsConfig(k_per_correction=2), seed=1)
    assert [d.to_json() for d in a] == [d.to_json() for d in b]
    none, report = generate_dreams(corrections, evals, vocab, judge, DreamsConfig(k_per_correction=0), seed=0)
    assert none == [] and report["counts"]["kept"] == 0


def test_a_planted_leak_into_the_eval_set_is_dropped(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    leaky = dict(vocab, scenarios=vocab["scenarios"][:1], prompt_templates=["Can you {task}? Please {direction}."])
    s = leaky["scenarios"][0]
    planted = Example(id="leak", family="in_distribution",
                      messages=[{"role": "user", "content": f"Can you {s['task']}? Please {s['direction']}."}])
    dreams, report = generate_dreams(corrections[:1], evals + [planted], leaky, judge,
                                     DreamsConfig(k_per_correction=1), seed=0)
    assert dreams == []
    assert report["counts"]["dropped_not_near_duplicate_of_eval"] == report["counts"]["generated"] > 0


def test_bad_vocabulary_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "vocab.yaml"
    path.write_text("scenarios: []\n")
    with pytest.raises(DataError, match="vocab.yaml: dream vocabulary needs non-empty"):
        load_vocab(path)
