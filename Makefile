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
# docker-compose v1 (the Python one on the index) in its own venv, only to validate docker-compose.yml against the
# Compose schema in the tests (no Docker engine here). Its pins clash with the project's, hence the separate venv;
# PyYAML 5 does not build on this Python, so it is installed without deps and they are pinned here.
COMPOSE_VENV  ?= .venv-compose
COMPOSE_STAMP := $(COMPOSE_VENV)/.installed
COMPOSE_DEPS  := "PyYAML>=6" docopt "jsonschema<4" texttable "websocket-client<1" "docker>=5,<7" dockerpty \
                 python-dotenv distro "requests<2.32" "setuptools<70"
PIP        := $(BIN)/python -m pip --disable-pip-version-check
RUN_DIR    ?= runs/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install run test test-fast lint app-config clean

# Best effort: without it the compose validation test skips with a reason; nothing else depends on it.
$(COMPOSE_STAMP):
	-( test -x $(COMPOSE_VENV)/bin/python || $(PYTHON) -m venv $(COMPOSE_VENV) ) && \
	  $(COMPOSE_VENV)/bin/python -m pip -q --disable-pip-version-check install --progress-bar off $(COMPOSE_DEPS) && \
	  $(COMPOSE_VENV)/bin/python -m pip -q --disable-pip-version-check install --progress-bar off --no-deps \
	    docker-compose==1.29.2 && touch $(COMPOSE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --progress-bar off $(TORCH_SPEC)
	$(PIP) install --progress-bar off -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fedtune simulate --out $(RUN_DIR)/simulate

test: $(STAMP) $(COMPOSE_STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check cli common client server simulations tests
	$(BIN)/ruff format --check cli common client server simulations tests
	$(BIN)/mypy cli common client server simulations

# pyproject's [tool.flwr.app.config] is generated from the run-config model (the defaults live there only).
app-config: $(STAMP)
	$(BIN)/python -m server.app_config

clean:
	rm -rf $(VENV) $(COMPOSE_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
