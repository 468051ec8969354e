"""Behavior data (docs/design.md §3): read and validate corrections, eval scenarios and retention prompts.

Every problem is reported with file, line and field, before anything downstream is written.

    corrections: id, messages, preferred, [rejected], [tags]
    eval:        id, messages, family, [preferred], [rejected], [prompt_format]
    retention:   id, text | messages (chat turns; their contents joined are the text)
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phaseflip.io import DataError, read_jsonl

ROLES = {"system", "user", "assistant"}
IN_DISTRIBUTION = "in_distribution"  # the family the behavior is trained on; every other family is held out
FAMILIES = {IN_DISTRIBUTION, "new_domain", "french", "format_shift", "inverted"}
PROMPT_FORMATS = {"chat", "plain"}


@dataclass(frozen=True)
class Example:
    """A prompt (chat turns) with optional reference replies. Corrections and eval scenarios alike."""

    id: str
    messages: list[dict[str, str]]
    preferred: str | None = None
    rejected: str | None = None
    family: str = IN_DISTRIBUTION
    prompt_format: str = "chat"
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}

    @property
    def direction(self) -> str:
        """The user's last turn: where the direction is given."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def _text(path: Path, lineno: int, record: dict[str, Any], key: str, required: bool) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{path}:{lineno}: field '{key}' is missing")
        return None
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{path}:{lineno}: field '{key}' is empty")
    return value


def _messages(path: Path, lineno: int, record: dict[str, Any], end_with_user: bool = True) -> list[dict[str, str]]:
    messages = record.get("messages")
    if messages is None:
        raise DataError(f"{path}:{lineno}: field 'messages' is missing")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}:{lineno}: field 'messages' must be a non-empty list of {{role, content}}")
    for i, turn in enumerate(messages):
        where = f"{path}:{lineno}: field 'messages[{i}]"
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise DataError(f"{where}' must be an object with exactly 'role' and 'content'")
        if turn["role"] not in ROLES:
            raise DataError(f"{where}.role' is {turn['role']!r}; expected one of {sorted(ROLES)}")
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise DataError(f"{where}.content' is empty")
    if end_with_user and messages[-1]["role"] != "user":
        raise DataError(f"{path}:{lineno}: field 'messages' must end with a user turn (the reply follows it)")
    return [{"role": t["role"], "content": t["content"]} for t in messages]


def _unique_id(path: Path, lineno: int, record: dict[str, Any], seen: dict[str, int]) -> str:
    rid = _text(path, lineno, record, "id", required=True)
    assert rid is not None
    if rid in seen:
        raise DataError(f"{path}:{lineno}: field 'id' {rid!r} duplicates line {seen[rid]}")
    seen[rid] = lineno
    return rid


def _check_keys(path: Path, lineno: int, record: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise DataError(f"{path}:{lineno}: unknown field(s) {unknown}; expected some of {sorted(allowed)}")


def _check_utf8(path: Path) -> None:
    """Name the file, line and field of the first bytes that are not UTF-8 (e.g. a latin-1 export)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return  # read_jsonl reports it
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw[: err.start].count(b"\n") + 1
        line = raw.splitlines()[lineno - 1].decode("utf-8", errors="replace")
        field = "?"
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                field = next((k for k, v in record.items() if "\ufffd" in json.dumps(v, ensure_ascii=False)), "?")
        raise DataError(f"{path}:{lineno}: field '{field}' is not valid UTF-8 (byte {err.start}); "
                        "save the file as UTF-8") from None


def load_examples(path: str | Path, kind: str) -> list[Example]:
    """Read corrections (`kind="corrections"`) or eval scenarios (`kind="eval"`)."""
    path = Path(path)
    _check_utf8(path)
    allowed = {"id", "messages", "preferred", "rejected", "tags", "meta", "family", "prompt_format"}
    seen: dict[str, int] = {}
    examples = []
    for lineno, record in read_jsonl(path):
        _check_keys(path, lineno, record, allowed)
        rid = _unique_id(path, lineno, record, seen)
        family = record.get("family", IN_DISTRIBUTION)
        if kind == "eval" and "family" not in record:
            raise DataError(f"{path}:{lineno}: field 'family' is missing; expected one of {sorted(FAMILIES)}")
        if family not in FAMILIES:
            raise DataError(f"{path}:{lineno}: field 'family' is {family!r}; expected one of {sorted(FAMILIES)}")
        prompt_format = record.get("prompt_format", "chat")
        if prompt_format not in PROMPT_FORMATS:
            raise DataError(f"{path}:{lineno}: field 'prompt_format' is {prompt_format!r}; expected chat or plain")
        tags = record.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"{path}:{lineno}: field 'tags' must be a list of strings")
        examples.append(Example(
            id=rid,
            messages=_messages(path, lineno, record),
            preferred=_text(path, lineno, record, "preferred", required=kind == "corrections"),
            rejected=_text(path, lineno, record, "rejected", required=False),
            family=family,
            prompt_format=prompt_format,
            tags=tags,
            meta=record.get("meta", {}),
        ))
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


def load_retention(path: str | Path) -> list[dict[str, str]]:
    """General prompts as {id, text}: rows give `text`, or chat `messages` whose contents, joined with a
    blank line, become the text (retention scores plain next-token distributions, not a chat reply)."""
    path = Path(path)
    _check_utf8(path)
    seen: dict[str, int] = {}
    prompts = []
    for lineno, record in read_jsonl(path):
        _check_keys(path, lineno, record, {"id", "text", "messages"})
        rid = _unique_id(path, lineno, record, seen)
        if ("text" in record) == ("messages" in record):
            raise DataError(f"{path}:{lineno}: give exactly one of field 'text' (a string) or field 'messages' "
                            "(chat turns)")
        if "messages" in record:
            text = "\n\n".join(m["content"].strip() for m in _messages(path, lineno, record, end_with_user=False))
        else:
            text = _text(path, lineno, record, "text", required=True) or ""
        prompts.append({"id": rid, "text": text})
    if not prompts:
        raise DataError(f"{path}: no records")
    return prompts


def subset_per_family(examples: list[Example], max_per_family: int | dict[str, int] | None) -> list[Example]:
    """A deterministic subset: the first N scenarios of each family in file order.

    `max_per_family` is one N for all, or {family: N} with an optional "default" (absent: keep all).
    """
    if max_per_family is None:
        return list(examples)
    limits = max_per_family if isinstance(max_per_family, dict) else {"default": max_per_family}
    counts: dict[str, int] = {}
    kept = []
    for ex in examples:
        counts[ex.family] = counts.get(ex.family, 0) + 1
        limit = limits.get(ex.family, limits.get("default"))
        if limit is None or counts[ex.family] <= limit:
            kept.append(ex)
    return kept


def ngrams(text: str, n: int = 3) -> set[str]:
    norm = " ".join(text.lower().split())
    return {norm[i : i + n] for i in range(max(1, len(norm) - n + 1))}


def similarity(a: str, b: str) -> float:
    """Character 3-gram Jaccard similarity: cheap and language-agnostic near-duplicate score."""
    ga, gb = ngrams(a), ngrams(b)
    return len(ga & gb) / max(1, len(ga | gb))


SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\s+[—–]\s+|\n+")
MIN_SENTENCE_WORDS = 3
WORDS = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
# Glue words of English and French requests: they make a question's shape, not its content.
STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for from with without into onto about as is are was were be
been being am do does did done have has had having can could would should will shall may might must it its
it's this that these those there here what what's which who whom whose when where why how i i'm i've i'd me my
we our us you your you're yours he she they them their his her not no nor only just also very please between
don't doesn't didn't isn't aren't can't won't any some all each every more most much many than too up out
one use using make get give tell show need want like know let let's
le la les un une des du de et ou mais si donc en dans sur au aux par pour avec sans ce cet cette ces qui que
quoi dont où est sont être avoir il elle ils elles je tu nous vous me te se mon ma mes ton ta tes son sa ses
notre votre leur ne pas plus très aussi comment quel quelle quels quelles
""".split())
COMMON_FRACTION = 0.1  # a word in at least this share of a set's prompts (and >= COMMON_MIN of them) is shape
COMMON_MIN = 5


def sentences(text: str) -> list[str]:
    """Sentences and dash-separated clauses of at least MIN_SENTENCE_WORDS words: where a direction sits."""
    return [s for s in SENTENCE.split(text) if len(re.findall(r"\w+", s)) >= MIN_SENTENCE_WORDS]


def words_of(text: str) -> list[str]:
    return [w.replace("’", "'") for w in WORDS.findall(text.lower())]


def common_words(texts: list[str]) -> frozenset[str]:
    """Words that many prompts of a set share (a recurring question shape such as "what is the difference
    between"): present in at least COMMON_FRACTION of the texts and in at least COMMON_MIN of them."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(words_of(text)))
    floor = max(COMMON_MIN, math.ceil(COMMON_FRACTION * len(texts)))
    return frozenset(w for w, n in df.items() if n >= floor)


def content_words(text: str, common: frozenset[str] = frozenset()) -> list[str]:
    """The words that carry a text's content: not glue (STOPWORDS), not the set's common words, 2+ chars."""
    return [w for w in words_of(text) if len(w) >= 2 and w not in STOPWORDS and w not in common]


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if len(sa) >= 2 and len(sb) >= 2 else 0.0


def leak_score(a: str, b: str, common: frozenset[str] = frozenset()) -> float:
    """How much the content of two user turns overlaps, 0..1, once glue words and the set's `common`
    words are dropped: the highest of the 3-gram similarity of the remaining words, their Jaccard, and
    the same two for any pair of sentences.

    Comparing content, not text, means two requests that share only a question shape ("What's the
    difference between X and Y?") score low, while a shared direction ("Pandas only, no numpy or SQL.")
    inside otherwise different requests, or reworded around the same key words, scores high.
    """
    ca, cb = content_words(a, common), content_words(b, common)
    score = max(similarity(" ".join(ca), " ".join(cb)) if ca and cb else 0.0, _jaccard(ca, cb))
    for sa in sentences(a):
        wa = content_words(sa, common)
        for sb in sentences(b):
            wb = content_words(sb, common)
            words = _jaccard(wa, wb)
            chars = similarity(" ".join(wa), " ".join(wb)) if len(wa) >= 2 and len(wb) >= 2 else 0.0
            score = max(score, words, chars)
    return score


def find_leaks(candidates: list[Example], evals: list[Example], threshold: float) -> list[tuple[str, str, float]]:
    """(candidate id, eval id, score) for every candidate whose content a scenario shares (see leak_score);
    words common to many prompts of the two sets together are ignored (see common_words)."""
    common = common_words([e.direction for e in candidates + evals])
    leaks = []
    for cand in candidates:
        for ev in evals:
            score = leak_score(cand.direction, ev.direction, common)
            if score >= threshold:
                leaks.append((cand.id, ev.id, round(score, 3)))
    return leaks
