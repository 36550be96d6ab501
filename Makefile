# seamless-node: `make run` starts a node, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test system-deps bench clean

# two stamps: what running a node needs, and on top of it what the tests and benchmarks need
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

## run: create the virtual environment, install what running needs (not the test tools), start a node (every built role, 127.0.0.1:5533, ./seamless-data)
run: $(BIN)/.installed
	$(BIN)/seamless-node run $(RUN_ARGS)

## test: install what the tests need (system packages included) and run the whole suite
test: system-deps $(BIN)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

system-deps:
	bash scripts/install-system-deps.sh tests

## bench: run the benchmarks (installs nginx and wrk first; see docs/performance.md)
bench: $(BIN)/.installed-test
	bash scripts/install-system-deps.sh bench
	$(BIN)/python bench/buffers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
