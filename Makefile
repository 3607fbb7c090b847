# The README's two commands: `make run` (the service on its embedded default) and `make test`.
# Each bootstraps .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU build on this machine's local index; any other spec downloads gigabytes.
TORCH  := torch==2.13.0
# `make run PORT=8080` serves the API on another port.
PORT   ?= 8000

.PHONY: run test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/embedmix up --data-dir .embedmix --port $(PORT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(BIN)/python bench/losses.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) runs .pytest_cache
