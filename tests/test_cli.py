import json
from pathlib import Path

from phaseflip.cli import main
from phaseflip.config import load_study_config


def params_with_eval(eval_path: Path) -> str:
    cfg = load_study_config({"study": "smoke"}).model_dump(mode="json")
    root = Path(__file__).resolve().parents[1]
    for key, rel in cfg["behavior"]["data"].items():
        cfg["behavior"]["data"][key] = str(root / rel)
    cfg["behavior"]["data"]["eval"] = str(eval_path)
    return json.dumps(cfg)


def test_bad_eval_data_fails_cleanly_and_writes_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"id": "e1", "family": "in_distribution", "messages": [{"role": "user", "content": "hi"}]}\n'
                   '{"id": "e1", "family": "french", "messages": [{"role": "user", "content": "salut"}]}\n')
    out = tmp_path / "out"
    code = main(["corrections", "--params", params_with_eval(bad), "--base", str(tmp_path / "unused"),
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "eval.jsonl:2: field 'id' 'e1' duplicates line 1" in err
    assert not out.exists()


def test_corrupt_table_names_the_file_and_the_rule(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"run_id": "r", "lr": 0.001')  # truncated
    (run_dir / "metrics.csv").write_text("step,family,metric,value\n0,all,margin,0.1\n")
    cfg = load_study_config({"study": "smoke"}).model_dump(mode="json")
    code = main(["forecast", "--params", json.dumps(cfg), "--run-dirs", str(run_dir),
                 "--out", str(tmp_path / "fc")])
    assert code == 2
    err = capsys.readouterr().err
    assert "run.json: cannot read JSON" in err and "rerun the rule" in err
    assert not (tmp_path / "fc").exists()
