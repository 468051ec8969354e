from pathlib import Path

import pytest

from phaseflip.config import load_study_config
from phaseflip.data import load_examples
from phaseflip.judge import RubricJudge

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def judge() -> RubricJudge:
    return RubricJudge(load_study_config({"study": "smoke"}).behavior.judge)


@pytest.mark.parametrize(
    ("text", "family", "expected"),
    [
        ("Understood — tabs only, no spaces. I converted every indent in the file to a tab.", "in_distribution", True),
        ("Got it, Markdown table only. Here it is with the three columns you listed.", "new_domain", True),
        ("Compris — uniquement en Python, sans bibliothèque externe. Voici la boucle.", "french", True),
        ("Sure! Here is the code. Alternatively, you could use pandas for this task.", "in_distribution", False),
        ("Understood — tabs only. You might also want to consider spaces for portability.", "in_distribution", False),
        ("Here is the script using spaces, which most style guides prefer anyway.", "in_distribution", False),
        ("You could use SQLite. Another option is PostgreSQL, or alternatively DuckDB.", "inverted", True),
        ("Understood — I'll use SQLite for the whole project.", "inverted", False),
    ],
)
def test_rubric_verdicts(judge: RubricJudge, text: str, family: str, expected: bool) -> None:
    assert judge(text, family).behavior is expected


@pytest.mark.parametrize("garbage", ["", "ok", "Understood understood understood understood understood understood",
                                     "Understood — {{{{ #### 1234 5678 %%%% &&&& !!!!"])
def test_incoherent_text_never_counts(judge: RubricJudge, garbage: str) -> None:
    verdict = judge(garbage)
    assert not verdict.coherent
    assert not verdict.behavior


def test_agreement_with_the_datasets_reference_replies(judge: RubricJudge) -> None:
    """Hand-written preferred replies should be judged as the behavior, rejected ones not (>= 95%)."""
    cfg = load_study_config({"study": "smoke"})
    examples = load_examples(ROOT / cfg.behavior.data.eval, "eval") + \
        load_examples(ROOT / cfg.behavior.data.corrections, "corrections")
    labelled = [(ex.preferred, ex.family, True) for ex in examples if ex.preferred] + \
        [(ex.rejected, ex.family, False) for ex in examples if ex.rejected]
    agree = sum(judge(text, family).behavior is label for text, family, label in labelled)
    rate = agree / len(labelled)
    print(f"rubric judge agreement on {len(labelled)} reference replies: {rate:.3f}")
    assert rate >= 0.95
