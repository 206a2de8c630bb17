# fedtune: two commands do all the set-up on a fresh machine.
#   make run    create/reuse .venv, install, run the main job on its built-in default
#   make test   create/reuse .venv, install, run the whole test suite
#
# torch is installed FIRST and pinned (TORCH_SPEC) so that resolving opacus/peft never pulls a CUDA build.
# GPU users pick their own build, e.g.:
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.fedtune-installed
PIP        := $(BIN)/python -m pip --disable-pip-version-check
RUN_DIR    ?= runs/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install run test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --progress-bar off $(TORCH_SPEC)
	$(PIP) install --progress-bar off -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fedtune simulate --out $(RUN_DIR)/simulate

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check common client server simulations tests
	$(BIN)/ruff format --check common client server simulations tests
	$(BIN)/mypy common client server simulations

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
