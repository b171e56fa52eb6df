# The two commands a newcomer runs: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast typecheck lint format slurm-up slurm-down bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## demo: the `demo` grid end to end on the synthetic CK+ twin, locally (~1-2.5 min on 2 cores)
demo: $(STAMP)
	$(PY) -m orchestrator launch --grid demo

## typecheck: mypy, strict on fer_core, the default checks on orchestrator (pyproject.toml)
typecheck: $(STAMP)
	$(PY) -m mypy

## test: type check + lint + the whole test suite (SLURM tests also need `make slurm-up` and FER_TEST_SLURM=1; CI does both)
test: $(STAMP) typecheck
	$(VENV)/bin/ruff check fer_core orchestrator tests bench
	$(VENV)/bin/ruff format --check fer_core orchestrator tests bench
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not slurm and not ray"

format: $(STAMP)
	$(VENV)/bin/ruff format fer_core orchestrator tests bench
	$(VENV)/bin/ruff check --fix fer_core orchestrator tests bench

slurm-up:
	bash scripts/local_slurm.sh up

slurm-down:
	bash scripts/local_slurm.sh down

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
