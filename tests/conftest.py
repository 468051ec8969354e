"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers (_project, _architectures), every subfolder

from phaseflip.config import StudyConfig, load_study_config
from phaseflip.model import base_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_cfg() -> StudyConfig:
    return load_study_config({"study": "smoke"})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smoke_cfg: StudyConfig) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    base_model.materialise(smoke_cfg.model, out, seed=0)
    return out


@pytest.fixture()
def tiny(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """A fresh (model, tokenizer) per test, so tests that train or patch cannot leak into others."""
    return base_model.load(tiny_model_dir)
