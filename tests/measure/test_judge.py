from pathlib import Path

import pytest

from phaseflip.config import load_study_config
from phaseflip.data import load_examples
from phaseflip.measure.judge import RubricJudge

ROOT = Path(__file__).resolve().parents[2]


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


def test_restatement_needs_the_direction_when_the_prompt_is_given(judge: RubricJudge) -> None:
    prompt = "Write a function to check for palindromes. Don't use slicing — loop with two indices."
    reply = "Understood — two indices, no slicing. Walk i and j inward."
    assert judge(reply, "in_distribution", prompt=prompt).behavior
    verdict = judge("Understood. Here is the function: def is_pal(s): ...", "in_distribution", prompt=prompt)
    assert not verdict.behavior and "restates" not in verdict.matched
    # The positional call the evaluator makes (no prompt) still works: the restatement check is skipped.
    assert judge("Understood. Here is the function: def is_pal(s): ...", "in_distribution").behavior


def test_make_judge_builds_the_configured_kind(smoke_cfg, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.config import ConfigError
    from phaseflip.measure.judge import ModelJudge, make_judge

    assert isinstance(make_judge(smoke_cfg.behavior), RubricJudge)
    model_cfg = smoke_cfg.behavior.model_copy(
        update={"judge": smoke_cfg.behavior.judge.model_copy(update={"kind": "model"})})
    with pytest.raises(ConfigError, match="judge.model.path"):
        make_judge(model_cfg)
    judge = make_judge(model_cfg, model_dir=tiny_model_dir)
    assert isinstance(judge, ModelJudge)
    verdict = judge("Understood — tabs only. I converted every indent.", "in_distribution", prompt="Use tabs only.")
    assert isinstance(verdict.behavior, bool) and verdict.coherent


def test_model_judge_scores_yes_against_no_with_the_coherence_gate(smoke_cfg, tiny) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.measure.judge import ModelJudge

    model, tok = tiny
    replies = ["Understood — tabs only. I converted every indent.", "Sure! Alternatively use spaces.",
               "%%%% 1234 #### 5678"]
    judge = ModelJudge(smoke_cfg.behavior.judge, smoke_cfg.behavior.description, "unused", model=model, tokenizer=tok)
    scores = judge.p_yes(replies, ["Use tabs only."] * 3)
    assert all(0 < s < 1 for s in scores)
    assert judge.p_yes(replies[:1], ["Use tabs only."]) == pytest.approx(scores[:1], abs=1e-5)  # batching-invariant
    assert "Use tabs only." in judge.judge_prompt(replies[0], "Use tabs only.")
    assert smoke_cfg.behavior.description.split()[0] in judge.judge_prompt(replies[0], None)
    # A threshold below every score says yes to all; garbled text still never counts.
    eager_cfg = smoke_cfg.behavior.judge.model_copy(
        update={"model": smoke_cfg.behavior.judge.model.model_copy(update={"threshold": 1e-9})})
    eager = ModelJudge(eager_cfg, smoke_cfg.behavior.description, "unused", model=model, tokenizer=tok)
    verdicts = eager.judge_many(replies, ["in_distribution"] * 3, ["Use tabs only."] * 3)
    assert [v.behavior for v in verdicts] == [True, True, False]
    assert [v.matched for v in verdicts] == [("model_yes",)] * 3
