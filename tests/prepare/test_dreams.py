from pathlib import Path

import pytest

from phaseflip.config import DreamsConfig, load_study_config, split_k
from phaseflip.data import Example, load_examples
from phaseflip.io import DataError
from phaseflip.measure.judge import RubricJudge
from phaseflip.prepare.dreams import ModelWriter, generate_dreams, load_vocab

ROOT = Path(__file__).resolve().parents[2]
DESC = load_study_config({"study": "smoke"}, check_paths=False).behavior.description


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
    # Counts name the first filter each candidate failed; failed_by_filter counts every failure.
    assert report["failed_by_filter"]["not_near_duplicate_of_eval"] == report["counts"]["generated"] > 0


def test_bad_vocabulary_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "vocab.yaml"
    path.write_text("scenarios: []\n")
    with pytest.raises(DataError, match="vocab.yaml: dream vocabulary needs non-empty"):
        load_vocab(path)


class FakeWriter:
    """A scripted 'model': new requests from a list, an acknowledging reply when told to, else a plain one."""

    def __init__(self, requests: list[str]):
        self.requests = list(requests)

    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        assert all(p.rstrip().endswith("-") for p in prompts)  # a list of requests to continue
        return [self.requests.pop(0) + "\n- something else" if self.requests else "" for _ in prompts]

    def reply(self, chats, max_new_tokens, temperature, seed):  # type: ignore[no-untyped-def]
        return [self._reply(messages) for messages in chats]

    @staticmethod
    def _reply(messages):  # type: ignore[no-untyped-def]
        request = messages[-1]["content"]
        if messages[0]["role"] == "system" and "acknowledges" in messages[0]["content"]:
            return f"Understood — {request.split('. ', 1)[-1].rstrip('.').lower()}. Here it is, done that way."
        return "Sure! Here is one way. Alternatively, you could use another tool entirely."


NEW_REQUESTS = [
    "Write a limerick about a lighthouse. Keep it clean and use no proper names.",
    "Draft a packing list for a canoe trip. Only list items under one kilogram.",
    "Explain recursion to a child. Use no code at all in the explanation.",
    "Plan a bird-watching morning in the marshes. Avoid any spot that needs a boat.",
]


def test_model_generator_keeps_judged_dreams_with_provenance(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    cfg = DreamsConfig(generators=["model"], k_per_correction=2)
    dreams, report = generate_dreams(corrections[:2], evals, vocab, judge, cfg, seed=3,
                                     writer=FakeWriter(NEW_REQUESTS), description=DESC)
    # written in rounds (attempt r of every correction in one batch), listed parent by parent
    assert [d.direction for d in dreams] == [NEW_REQUESTS[i] for i in (0, 2, 1, 3)]
    assert [d.meta["attempt"] for d in dreams] == [0, 1, 0, 1]
    assert {d.meta["generator"] for d in dreams} == {"model"} and {d.meta["seed"] for d in dreams} == {3}
    assert [d.meta["parent"] for d in dreams] == ["c01", "c01", "c02", "c02"]
    assert all(all(d.meta["filters"].values()) for d in dreams)
    assert report["per_generator"]["model"]["kept"] == 4
    assert report["diversity"]["mean_pairwise_3gram_distance"] > 0.5


def test_generators_mix_and_split_k(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    assert split_k(5, ["template", "model"]) == {"template": 3, "model": 2}
    assert split_k(0, ["template", "model"]) == {"template": 0, "model": 0}
    cfg = DreamsConfig(generators=["template", "model"], k_per_correction=3)
    dreams, report = generate_dreams(corrections[:1], evals, vocab, judge, cfg, seed=0,
                                     writer=FakeWriter(NEW_REQUESTS), description=DESC)
    assert [d.meta["generator"] for d in dreams] == ["template", "template", "model"]
    assert report["k_per_generator"] == {"template": 2, "model": 1}
    counts = report["counts"]
    assert counts["generated"] == counts["kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_"))
    none, _ = generate_dreams(corrections, evals, vocab, judge, DreamsConfig(generators=["template", "model"],
                                                                             k_per_correction=0), seed=0)
    assert none == []  # K=0 needs no model


def test_model_generator_drops_bad_candidates_by_filter(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    leak = evals[0].direction  # a dream equal to an eval scenario
    copy = corrections[0].direction  # a copy of its parent
    requests = [leak, copy, "", NEW_REQUESTS[0], NEW_REQUESTS[0]]
    cfg = DreamsConfig(generators=["model"], k_per_correction=5)
    dreams, report = generate_dreams(corrections[:1], evals, vocab, judge, cfg, seed=0,
                                     writer=FakeWriter(requests), description=DESC)
    counts = report["counts"]
    assert [d.direction for d in dreams] == [NEW_REQUESTS[0]]
    assert counts["dropped_not_near_duplicate_of_eval"] == 1
    assert counts["dropped_not_near_duplicate_of_correction"] == 1
    assert counts["dropped_not_near_duplicate_of_dream"] == 1
    assert counts["dropped_coherence"] + counts.get("dropped_judge", 0) >= 1


def test_model_generator_needs_a_model(setup) -> None:  # type: ignore[no-untyped-def]
    corrections, evals, vocab, judge = setup
    with pytest.raises(DataError, match="needs the base model"):
        generate_dreams(corrections, evals, vocab, judge, DreamsConfig(generators=["model"], k_per_correction=1), 0)
    with pytest.raises(ValueError, match="twice"):
        DreamsConfig(generators=["template", "template"])


def test_model_generator_runs_on_a_real_model(setup, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Mechanics on the tiny random model: every candidate is generated, filtered and counted."""
    corrections, evals, vocab, judge = setup
    cfg = DreamsConfig(generators=["model"], k_per_correction=1,
                       model={"max_request_tokens": 8, "max_reply_tokens": 8, "attempts_per_dream": 2})
    dreams, report = generate_dreams(corrections[:1], evals, vocab, judge, cfg, seed=0, writer=ModelWriter(*tiny))
    counts = report["counts"]
    assert 1 <= counts["generated"] <= 2 and report["per_generator"]["model"]["generated"] == counts["generated"]
    assert all(d.meta["generator"] == "model" for d in dreams)
    assert counts["generated"] == counts["kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_"))


def test_dreams_cli_with_the_model_generator(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from phaseflip.cli import main

    cfg = load_study_config({"study": "smoke", "dreams__generators": "[template,model]",
                             "dreams__k_per_correction": "2"}).model_dump(mode="json")
    cfg["dreams"]["model"].update(max_request_tokens=6, max_reply_tokens=6, attempts_per_dream=1)
    for key, rel in cfg["behavior"]["data"].items():
        cfg["behavior"]["data"][key] = str(ROOT / rel)
    data = cfg["behavior"]["data"]
    out = tmp_path / "dreams"
    args = ["dreams", "--params", json.dumps(cfg), "--corrections", data["corrections"], "--eval", data["eval"],
            "--out", str(out)]
    assert main(args) == 2  # the model generator without --base: a clear error, nothing written
    assert not out.exists()
    assert main(args + ["--base", str(tiny_model_dir)]) == 0
    report = json.loads((out / "dream_report.json").read_text())
    assert set(report["per_generator"]) == {"template", "model"}
    assert report["counts"]["generated"] >= report["counts"]["kept"]


def test_no_vocabulary_is_read_without_template_dreams(tmp_path: Path) -> None:
    """Issue 16, failure 2: a vocabulary without the template fields (or none) is fine when K is 0 or the
    template generator is not selected; it is read (and checked) only when it will be used."""
    from phaseflip.prepare.dreams import vocab_for

    bad = tmp_path / "vocab.yaml"
    bad.write_text("words: [a, b]\n")
    assert vocab_for(DreamsConfig(k_per_correction=0), str(bad)) is None
    assert vocab_for(DreamsConfig(generators=["model"], k_per_correction=3), None) is None
    with pytest.raises(DataError, match="dream vocabulary needs non-empty"):
        vocab_for(DreamsConfig(k_per_correction=1), str(bad))
    with pytest.raises(DataError, match="behavior.data.dream_vocab"):
        vocab_for(DreamsConfig(k_per_correction=1), None)


class RecordingWriter(FakeWriter):
    def __init__(self, requests: list[str]):
        super().__init__(requests)
        self.prompts: list[str] = []
        self.chats: list[list[dict[str, str]]] = []

    def complete(self, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        self.prompts += prompts
        return super().complete(prompts, max_new_tokens, temperature, seed)

    def reply(self, chats, max_new_tokens, temperature, seed):  # type: ignore[no-untyped-def]
        self.chats += chats
        return super().reply(chats, max_new_tokens, temperature, seed)


def test_model_generator_prompts_come_from_the_behavior() -> None:
    """Issue 16, failure 7: the model generator's prompts are built from the behavior's description and
    corrections (few-shot), with no listening text and no vocabulary."""
    formal = load_study_config({"behavior": "formal"})
    corrections = load_examples(ROOT / formal.behavior.data.corrections, "corrections")
    evals = load_examples(ROOT / formal.behavior.data.eval, "eval")
    writer = RecordingWriter(["could u explain how tides work, quick version"])
    generate_dreams(corrections[:3], evals, None, RubricJudge(formal.behavior.judge),
                    DreamsConfig(generators=["model"], k_per_correction=1, model={"attempts_per_dream": 1}), seed=0,
                    writer=writer, description=formal.behavior.description)
    told, plain = writer.chats[0], writer.chats[3]  # one batch per round: 3 told chats, then the 3 plain
    assert told[0] == {"role": "system", "content": " ".join(formal.behavior.description.split())}
    assert told[1]["content"] == corrections[0].direction and told[2]["content"] == corrections[0].preferred  # shot
    assert told[-1] == plain[-1] and plain[0]["role"] == "user"  # the same request, without the behavior
    text = " ".join(writer.prompts) + " ".join(m["content"] for m in told)
    for listening_text in ["Begin your reply", "alternatives", "restate"]:
        assert listening_text not in text
    assert corrections[1].direction in writer.prompts[0]  # the request list continues the corrections' own


def test_template_generator_takes_any_vocabulary_shape(tmp_path: Path) -> None:
    """The template fields are the vocabulary's own placeholders: a formal-register vocabulary with no
    acknowledgment, restatement or alternative fills, and a scenario missing a used field is named."""
    formal = load_study_config({"behavior": "formal"})
    corrections = load_examples(ROOT / formal.behavior.data.corrections, "corrections")
    evals = load_examples(ROOT / formal.behavior.data.eval, "eval")
    path = tmp_path / "vocab.yaml"
    path.write_text(
        "scenarios:\n"
        "- {topic: the water cycle, fact: Water evaporates, condenses into clouds and falls as rain.}\n"
        "- {topic: photosynthesis, fact: Plants turn light, water and carbon dioxide into sugar.}\n"
        "prompt_templates: ['hey can u explain {topic} real quick']\n"
        "preferred_templates: ['Certainly. {fact} It is a continuous process.']\n"
        "rejected_templates: ['Sure thing! {fact} Pretty cool, right?']\n")
    vocab = load_vocab(path)
    dreams, report = generate_dreams(corrections[:2], evals, vocab, RubricJudge(formal.behavior.judge),
                                     DreamsConfig(generators=["template"], k_per_correction=1), seed=0)
    assert len(dreams) == 2 and all(d.direction.startswith("hey can u explain") for d in dreams)
    assert all(d.preferred and "{" not in d.preferred and d.tags == [] for d in dreams)
    path.write_text(path.read_text().replace("fact: Plants", "facts: Plants"))
    with pytest.raises(DataError, match=r"scenarios\[1\] needs fields \['fact', 'topic'\]"):
        load_vocab(path)
    path.write_text(path.read_text().replace("'Certainly. {fact}", "'{ack} {fact}"))
    with pytest.raises(DataError, match=r"uses? \{ack\}.*needs non-empty \['acks'\]"):
        load_vocab(path)


def test_the_dreams_stage_needs_the_base_model_only_when_the_model_generator_writes_dreams() -> None:
    from phaseflip.prepare.dreams import uses_model_writer

    cfg = load_study_config({"study": "smoke"}).dreams
    assert not uses_model_writer(cfg.model_copy(update={"generators": ["template"]}))
    assert uses_model_writer(cfg.model_copy(update={"generators": ["template", "model"], "k_per_correction": 2}))
    assert not uses_model_writer(cfg.model_copy(update={"generators": ["model"], "k_per_correction": 0}))
