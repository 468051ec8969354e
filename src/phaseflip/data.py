"""Behavior data (§3): read and validate corrections, eval scenarios and retention prompts.

Every problem is reported with file, line and field, before anything downstream is written.

    corrections: id, messages, preferred, [rejected], [tags]
    eval:        id, messages, family, [preferred], [rejected], [prompt_format]
    retention:   id, text
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phaseflip.io import DataError, read_jsonl

ROLES = {"system", "user", "assistant"}
FAMILIES = {"in_distribution", "new_domain", "french", "format_shift", "inverted"}
PROMPT_FORMATS = {"chat", "plain"}


@dataclass(frozen=True)
class Example:
    """A prompt (chat turns) with optional reference replies. Corrections and eval scenarios alike."""

    id: str
    messages: list[dict[str, str]]
    preferred: str | None = None
    rejected: str | None = None
    family: str = "in_distribution"
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


def _messages(path: Path, lineno: int, record: dict[str, Any]) -> list[dict[str, str]]:
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
    if messages[-1]["role"] != "user":
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


def load_examples(path: str | Path, kind: str) -> list[Example]:
    """Read corrections (`kind="corrections"`) or eval scenarios (`kind="eval"`)."""
    path = Path(path)
    allowed = {"id", "messages", "preferred", "rejected", "tags", "meta", "family", "prompt_format"}
    seen: dict[str, int] = {}
    examples = []
    for lineno, record in read_jsonl(path):
        _check_keys(path, lineno, record, allowed)
        rid = _unique_id(path, lineno, record, seen)
        family = record.get("family", "in_distribution")
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
    path = Path(path)
    seen: dict[str, int] = {}
    prompts = []
    for lineno, record in read_jsonl(path):
        _check_keys(path, lineno, record, {"id", "text"})
        rid = _unique_id(path, lineno, record, seen)
        text = _text(path, lineno, record, "text", required=True)
        assert text is not None
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


def find_leaks(candidates: list[Example], evals: list[Example], threshold: float) -> list[tuple[str, str, float]]:
    """(candidate id, eval id, similarity) for every candidate whose direction is a near-duplicate."""
    leaks = []
    for cand in candidates:
        for ev in evals:
            score = similarity(cand.direction, ev.direction)
            if score >= threshold:
                leaks.append((cand.id, ev.id, round(score, 3)))
    return leaks
