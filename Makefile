# Entry points for a fresh clone: `make demo` and `make test` (README's Quick start; CI runs `make test`).
# Each creates .venv when missing and installs the exact versions in requirements.lock, then the project
# itself without dependencies. The package keeps ranges (pyproject.toml); the lock is for development and CI.
#   make lock         regenerate requirements.lock from pyproject.toml's ranges (pip-compile; see README)
#   make test-latest  the newest releases the ranges allow (torch too: a CUDA build), fast tests (.venv-latest)
#   make test-oldest  the lower bounds of the ranges, fast tests (.venv-oldest)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PINS := requirements/lock-pins.txt
# Build tools are pinned too: an unpinned pip or pip-tools is a different resolver on a different day.
PIP_PIN := pip==26.3
PIP_TOOLS_PIN := pip-tools==7.6.2
# torch's CPU build lies on our machines' disk (/opt/wheels); any other release pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# Tests that need nothing slow: what test-latest and test-oldest run.
FAST_TESTS := -m "not slow"

.PHONY: demo test lint lock test-latest test-oldest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_PIN)

# pip stops at the first requirement it cannot satisfy and names it; make stops with it.
$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet --no-input -r $(LOCK)
	$(BIN)/pip install --quiet --no-input --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/fedpeft run default

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache

lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet $(PIP_PIN) $(PIP_TOOLS_PIN)
	.venv-lock/bin/pip-compile --quiet --all-extras --strip-extras --allow-unsafe --no-emit-find-links \
		--no-emit-index-url --upgrade -c $(PINS) -f /opt/wheels -o $(LOCK) pyproject.toml
	rm -rf .venv-lock

test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet $(PIP_PIN)
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[quant,dp,test]'
	.venv-latest/bin/pip list --format=freeze > .venv-latest/versions.txt
	HF_HUB_OFFLINE=1 .venv-latest/bin/python -m pytest -q $(FAST_TESTS)

test-oldest:
	bash requirements/oldest.sh

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .venv-lock runs .pytest_cache
