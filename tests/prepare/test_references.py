"""Reference pairs made with the base model when eval scenarios have none (issue 16, failure 5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from phaseflip.config import load_study_config
from phaseflip.data import Example, load_examples
from phaseflip.measure.judge import RubricJudge
from phaseflip.prepare.references import make_reference_pairs, reference_shots, summary_line

ROOT = Path(__file__).resolve().parents[2]
FORMAL = load_study_config({"behavior": "formal"}).behavior  # the default retries (smoke allows one try)


class ScriptedReplier:
    """Formal text when the behavior is in context (a system turn), casual text otherwise; scenario
    "stubborn" never gets a formal reply, "chatty" is casual even in context until a sampled retry."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float | None, int]] = []

    def __call__(self, chats: Sequence[list[dict[str, str]]], formats: Sequence[str], temperature: float | None,
                 seed: int) -> list[str]:
        self.calls.append((len(chats), temperature, seed))
        out = []
        for chat in chats:
            request = chat[-1]["content"]
            told = chat[0]["role"] == "system" and "formal register" in chat[0]["content"]
            if told and "stubborn" not in request and not ("chatty" in request and temperature is None):
                out.append("The answer depends on the situation. It is best to proceed carefully and slowly.")
            else:
                out.append("Hey, that's a cool one! You'll totally love it, trust me.")
        return out


def scenario(i: str, text: str, **kw: str) -> Example:
    return Example(id=i, messages=[{"role": "user", "content": text}], family="in_distribution", **kw)


def test_pairs_are_generated_judged_and_recorded() -> None:
    corrections = load_examples(ROOT / FORMAL.data.corrections, "corrections")
    evals = [scenario("e1", "how do i boil an egg lol"), scenario("e2", "chatty question about stamps"),
             scenario("e3", "stubborn question about tea"),
             scenario("e4", "hand-written one", preferred="It is so.", rejected="Yeah it's so!")]
    replier = ScriptedReplier()
    out, report = make_reference_pairs(evals, corrections, FORMAL, RubricJudge(FORMAL.judge), replier, seed=0)
    by_id = {e.id: e for e in out}
    # Judged pairs: the in-context reply the judge accepts, the plain reply it rejects.
    assert by_id["e1"].preferred and by_id["e1"].preferred.startswith("The answer depends")
    assert by_id["e1"].rejected and by_id["e1"].rejected.startswith("Hey")
    refs = by_id["e1"].meta["references"]
    assert refs["pair"] and refs["preferred"]["source"] == "base_model_in_context"
    assert refs["preferred"]["attempt"] == 0 and refs["preferred"]["temperature"] is None  # greedy first
    assert refs["preferred"]["shots"] == [s.id for s in reference_shots(corrections, FORMAL.references.n_shots, 0)]
    assert refs["rejected"]["source"] == "base_model_plain"
    # A retry with a sampled reply (another seed) rescues a scenario whose greedy reply failed.
    assert by_id["e2"].meta["references"]["preferred"]["attempt"] == 1
    # A scenario the judge never accepts gets no pair, is named, and stays without references.
    assert by_id["e3"].preferred is None and by_id["e3"].rejected is None
    assert by_id["e3"].meta["references"]["pair"] is False
    assert report["without_pair"] == ["e3"]
    # Hand-written pairs always win and are not regenerated.
    assert by_id["e4"].preferred == "It is so." and "references" not in by_id["e4"].meta
    assert report["hand_written_pairs"] == 1 and report["generated_pairs"] == 2 and report["with_pair"] == 3
    # Preferred: 3 greedy + 2 sampled (e2, e3) + 2 more for e3 = 7 judged, 2 accepted; rejected: 2, both kept.
    assert report["judged"] == {"preferred": 3 + 2 + 1 + 1, "rejected": 2}
    assert report["accepted"] == {"preferred": 2, "rejected": 2}
    assert report["acceptance_rate"]["overall"] == round(4 / 9, 3)
    line = summary_line(report)
    assert "3 of 4 eval scenarios" in line and "e3" in line and "preferred 2/7" in line


def test_a_hand_written_side_is_kept_and_only_the_other_is_made() -> None:
    corrections = load_examples(ROOT / FORMAL.data.corrections, "corrections")
    evals = [scenario("e1", "how do i boil an egg lol", preferred="One boils it for nine minutes.")]
    out, report = make_reference_pairs(evals, corrections, FORMAL, RubricJudge(FORMAL.judge), ScriptedReplier(), 0)
    assert out[0].preferred == "One boils it for nine minutes." and out[0].rejected
    assert out[0].meta["references"]["preferred"] == {"source": "hand"}
    assert report["judged"]["preferred"] == 0 and report["generated_pairs"] == 1


def test_no_scenario_needing_a_pair_means_no_model_call() -> None:
    evals = [scenario("e1", "x y z", preferred="It is.", rejected="It's!")]
    replier = ScriptedReplier()
    out, report = make_reference_pairs(evals, [], FORMAL, RubricJudge(FORMAL.judge), replier, 0)
    assert out == evals and replier.calls == [] and report["needing_pairs"] == 0
