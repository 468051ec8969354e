"""How often the judge agrees with hand-written labels (docs/design.md §6): overall, per family, per source.

The labeled set (`judge_labels.jsonl` beside the behavior's eval data) holds replies (written by hand,
or sampled from a model with and without the behavior's description as a system prompt) and a label
given by reading each one: does it show the behavior? Fields: id, family, source, prompt, reply, label.

    python -m phaseflip.tools.judge_agreement                                  # the rubric judge
    python -m phaseflip.tools.judge_agreement --model-judge results/base_model  # and a model judge (SmolLM2)
    python -m phaseflip.tools.judge_agreement --show-disagreements behavior=<name>
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phaseflip.config import ConfigError, JudgeConfig, load_study_config
from phaseflip.io import DataError, read_jsonl, write_json
from phaseflip.measure.judge import ModelJudge, RubricJudge

FIELDS = {"id": str, "family": str, "source": str, "prompt": str, "reply": str, "label": bool}
OPTIONAL = {"eval_id", "note"}


@dataclass(frozen=True)
class Labeled:
    id: str
    family: str
    source: str
    prompt: str
    reply: str
    label: bool


def load_labels(path: str | Path) -> list[Labeled]:
    path = Path(path)
    records, seen = [], set()
    for lineno, rec in read_jsonl(path):
        for key, kind in FIELDS.items():
            if not isinstance(rec.get(key), kind):
                raise DataError(f"{path}:{lineno}: field '{key}' must be a {kind.__name__}")
        unknown = sorted(set(rec) - set(FIELDS) - OPTIONAL)
        if unknown:
            raise DataError(f"{path}:{lineno}: unknown field(s) {unknown}")
        if rec["id"] in seen:
            raise DataError(f"{path}:{lineno}: field 'id' {rec['id']!r} is a duplicate")
        seen.add(rec["id"])
        records.append(Labeled(**{k: rec[k] for k in FIELDS}))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def agreement(predicted: Sequence[bool], records: Sequence[Labeled]) -> dict[str, Any]:
    """Agreement overall, per family and per source, and the confusion counts (label vs judge)."""
    def summary(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
        n = len(pairs)
        confusion = {"tp": sum(p and y for p, y in pairs), "fp": sum(p and not y for p, y in pairs),
                     "fn": sum(not p and y for p, y in pairs), "tn": sum(not p and not y for p, y in pairs)}
        return {"n": n, "agreement": round((confusion["tp"] + confusion["tn"]) / n, 3) if n else None, **confusion}

    pairs = list(zip(predicted, (r.label for r in records), strict=True))
    groups: dict[str, dict[str, list[tuple[bool, bool]]]] = {"family": defaultdict(list), "source": defaultdict(list)}
    for (p, y), rec in zip(pairs, records, strict=True):
        groups["family"][rec.family].append((p, y))
        groups["source"][rec.source].append((p, y))
    return {"overall": summary(pairs),
            "per_family": {k: summary(v) for k, v in sorted(groups["family"].items())},
            "per_source": {k: summary(v) for k, v in sorted(groups["source"].items())}}


def rubric_predictions(judge: RubricJudge, records: Sequence[Labeled]) -> list[bool]:
    return [judge(r.reply, r.family, prompt=r.prompt).behavior for r in records]


def model_predictions(judge: ModelJudge, records: Sequence[Labeled]) -> list[bool]:
    verdicts = judge.judge_many([r.reply for r in records], [r.family for r in records], [r.prompt for r in records])
    return [v.behavior for v in verdicts]


def agreement_table(name: str, result: dict[str, Any]) -> str:
    lines = [f"{name}: agreement {result['overall']['agreement']} on {result['overall']['n']} labeled replies"]
    header = f"  {'group':<28}{'n':>4}{'agree':>7}{'tp':>5}{'fp':>5}{'fn':>5}{'tn':>5}"
    lines.append(header)
    rows = [("overall", result["overall"])] + [(f"family={k}", v) for k, v in result["per_family"].items()] + \
        [(f"source={k}", v) for k, v in result["per_source"].items()]
    for label, s in rows:
        lines.append(f"  {label:<28}{s['n']:>4}{s['agreement']:>7.3f}{s['tp']:>5}{s['fp']:>5}{s['fn']:>5}{s['tn']:>5}")
    return "\n".join(lines)


def default_labels_path(judge_root: Path, eval_rel: str) -> Path:
    return (judge_root / eval_rel).parent / "judge_labels.jsonl"


def _report(name: str, predict: Callable[[], list[bool]], records: list[Labeled], show: bool) -> dict[str, Any]:
    predicted = predict()
    result = agreement(predicted, records)
    print(agreement_table(name, result))
    if show:
        for p, r in zip(predicted, records, strict=True):
            if p != r.label:
                print(f"  disagree {r.id} [{r.family}/{r.source}] label={r.label} judge={p}: {r.reply[:100]!r}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phaseflip.tools.judge_agreement", description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. behavior=formal")
    ap.add_argument("--labels", help="labeled replies (default: judge_labels.jsonl beside the eval data)")
    ap.add_argument("--model-judge", help="also score a model judge: a HF model folder (e.g. results/base_model)")
    ap.add_argument("--show-disagreements", action="store_true")
    ap.add_argument("--json", help="write the agreement numbers here")
    args = ap.parse_args(argv)
    try:
        cfg = load_study_config(dict(o.split("=", 1) for o in args.overrides))
        from phaseflip.config import PROJECT_ROOT

        records = load_labels(args.labels or default_labels_path(PROJECT_ROOT, cfg.behavior.data.eval))
        rubric_cfg = JudgeConfig.model_validate({**cfg.behavior.judge.model_dump(), "kind": "rubric"})
        rubric = RubricJudge(rubric_cfg)
        out = {"rubric": _report("rubric judge", lambda: rubric_predictions(rubric, records), records,
                                 args.show_disagreements)}
        if args.model_judge:
            model_judge = ModelJudge(cfg.behavior.judge, cfg.behavior.description, args.model_judge)
            out["model"] = _report(f"model judge ({args.model_judge}, threshold {cfg.behavior.judge.model.threshold})",
                                   lambda: model_predictions(model_judge, records), records, args.show_disagreements)
    except (DataError, ConfigError) as err:
        print(f"judge_agreement: {err}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
