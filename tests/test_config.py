from pathlib import Path

import pytest
import yaml

from phaseflip.config import (
    ConfigError,
    check_data_paths,
    choice_lines,
    compose,
    load_study_config,
    to_overrides,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("study", ["smoke", "default", "full"])
def test_presets_compose_and_validate(study: str) -> None:
    cfg = load_study_config({"study": study})
    assert cfg.study.name == study


def test_smoke_uses_tiny_model_and_default_uses_smollm2() -> None:
    assert load_study_config({"study": "smoke"}).model.source == "tiny_random"
    assert load_study_config({}).model.source == "gguf_package"


def test_snakemake_style_overrides_reach_the_config() -> None:
    # `--config study=smoke 'train={lrs: [1e-4, 0.003]}' 'eval={n_samples: 3}'`, as Snakemake parses it
    cfg = load_study_config({"study": "smoke", "train": {"lrs": ["1e-4", "0.003"]}, "eval": {"n_samples": "3"}})
    assert cfg.train.lrs == [1e-4, 3e-3]
    assert cfg.eval.n_samples == 3


def test_to_overrides_renders_hydra_grammar() -> None:
    assert to_overrides({"study": "smoke", "train": {"lrs": [0.001, 0.01], "lora": {"r": 4}}, "x": True,
                         "y": None}) == ["study=smoke", "train.lrs=[0.001,0.01]", "train.lora.r=4", "x=true", "y=null"]
    assert to_overrides({"model": "local", "model__path": "/m", "train__lrs": ["1e-4"]}) == [
        "model=local", "model.path=/m", "train.lrs=[1e-4]"]
    # a list of records, e.g. --config 'train__extra_runs=[{lr: 1e-3, n_real: 4, dream_k: 2}]'
    records = {"train__extra_runs": [{"lr": 0.001, "n_real": 4}]}
    assert to_overrides(records) == ["train.extra_runs=[{lr:0.001,n_real:4}]"]
    cfg = load_study_config({"train__extra_runs": [{"lr": 0.001, "n_real": 4, "dream_k": 2}]})
    assert cfg.train.extra_runs[0].n_real == 4 and cfg.train.extra_runs[0].dream_k == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lrs": [0.0, 1e-3]}, "learning rate must be > 0"),
        ({"train.lrs": []}, "train.lrs"),
        ({"train.seeds": []}, "train.seeds"),
        ({"train.max_steps": "many"}, "train.max_steps"),
        ({"train.checkpoint_steps": [0, 99]}, "outside 1..max_steps"),
        ({"train.nonsense": 1}, "train.nonsense"),
        ({"study": "no_such_preset"}, "no_such_preset"),
        ({"train.dream_k": [50]}, "exceeds dreams.k_per_correction"),
        ({"train.extra_runs": [{"lr": 1e-3, "n_real": 2, "dream_k": 50}]}, "exceeds dreams.k_per_correction"),
        ({"train.extra_runs": [{"lr": -1, "n_real": 2}]}, "train.extra_runs"),
    ],
)
def test_bad_config_is_a_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study_config(overrides)


def test_composed_config_is_accepted_as_is() -> None:
    raw = compose(["study=smoke"])
    assert load_study_config(raw) == load_study_config({"study": "smoke"})
    raw["train"]["typo"] = 1
    with pytest.raises(ConfigError, match="train.typo"):
        validate(raw)


def test_params_yaml_is_the_composed_default() -> None:
    """DVC reads params.yaml; it must be exactly what Hydra composes from conf/ (regenerate if not), plus
    the `compute` block `make study` adds (this machine's resolved dtypes) when it has run here."""
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text())
    on_disk.pop("compute", None)
    assert on_disk == compose([])


def test_data_paths_outside_data_folder_are_refused(tmp_path: Path) -> None:
    cfg = load_study_config({"study": "smoke", "behavior.data.eval": "../../etc/passwd"}, check_paths=False)
    with pytest.raises(ConfigError, match="outside"):
        check_data_paths(cfg)


def test_missing_data_file_is_reported() -> None:
    cfg = load_study_config({"study": "smoke", "behavior.data.eval": "data/behaviors/listening/missing.jsonl"},
                            check_paths=False)
    with pytest.raises(ConfigError, match="missing.jsonl"):
        check_data_paths(cfg)


def test_a_behavior_needs_only_corrections_and_eval() -> None:
    """Issue 16, failure 1: no dream vocabulary (and no retention file) is required without template dreams."""
    cfg = load_study_config({"behavior": "formal", "study": "smoke", "dreams__k_per_correction": "0",
                             "dreams__generators": "[template]"})
    assert cfg.behavior.data.dream_vocab is None
    raw = compose(["dreams=none", "study=smoke", "dreams.k_per_correction=0"])
    del raw["behavior"]["data"]["dream_vocab"], raw["behavior"]["data"]["retention"]
    data = validate(raw).behavior.data
    assert data.dream_vocab is None and data.retention == "data/general/retention.jsonl"
    assert (ROOT / data.retention).is_file()
    with pytest.raises(ConfigError, match=r"no data\.dream_vocab: add one, or choose dreams=model or dreams.k_per"):
        load_study_config({"behavior": "formal", "dreams": "template", "study": "smoke"})


def test_a_behavior_without_vocabulary_dreams_with_the_model() -> None:
    cfg = load_study_config({"behavior": "formal"})
    assert cfg.dreams.generators == ["model"] and cfg.dreams.k_per_correction == 2
    assert "has no data.dream_vocab" in cfg.dreams.chosen
    assert any("dreams generator auto: model" in line for line in choice_lines(cfg))
    listening = load_study_config({})
    assert listening.dreams.generators == ["template"] and listening.dreams.k_per_correction == 10
    assert "has a data.dream_vocab" in listening.dreams.chosen
    # an explicit choice wins, and says nothing was chosen for it
    explicit = load_study_config({"behavior": "formal", "dreams": "model", "dreams__k_per_correction": "3"})
    assert explicit.dreams.generators == ["model"] and explicit.dreams.k_per_correction == 3
    assert explicit.dreams.chosen == "" and not any("dreams" in line for line in choice_lines(explicit))


def test_lrs_and_checkpoints_auto_need_the_pilot_and_a_list_skips_it() -> None:
    cfg = load_study_config({})
    assert cfg.train.lrs == "auto" and cfg.train.checkpoint_steps == "auto" and cfg.train.needs_pilot
    assert any("pilot stage chooses" in line for line in choice_lines(cfg))
    explicit = load_study_config({"train__lrs": "[3e-3,6e-3]", "train__checkpoint_steps": "[4,6,8,11,16]"})
    assert not explicit.train.needs_pilot and not any("pilot" in line for line in choice_lines(explicit))
    with pytest.raises(ConfigError, match="extra run's lr must be > 0 or 'main'"):
        load_study_config({"train__extra_runs": "[{lr: -1, n_real: 4}]"})
    with pytest.raises(ConfigError, match="train.pilot.targets"):
        load_study_config({"train__pilot__targets": "[0.5,1.5]"})


def test_the_config_command_explains_itself_and_refuses_a_word_that_is_not_an_override(capsys) -> None:  # type: ignore[no-untyped-def]
    from phaseflip.config import main

    assert main(["--help"]) == 0 and "key=value" in capsys.readouterr().out
    assert main(["smoke"]) == 2
    assert "'smoke' is not an override (expected key=value)" in capsys.readouterr().err
