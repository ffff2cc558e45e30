# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv when missing.
# torch is pinned to the CPU build that the dev/CI machines carry; the package itself asks for torch>=2.4.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/fedpeft run default

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
