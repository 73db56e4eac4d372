# The two set-up commands: `make run` and `make test`. Both create the virtual
# environment and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= examples/wakegate.yaml
# Two test processes: most of a test's time is waiting on the processes it runs.
PYTEST_ARGS ?= -n 2
BENCH_ARGS ?=

.PHONY: run test lint bench clean

$(BIN)/wakegate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: $(BIN)/wakegate
	$(BIN)/wakegate up -c $(CONFIG)

lint: $(BIN)/wakegate
	$(BIN)/ruff check .

test: $(BIN)/wakegate
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every scenario of bench/ (see bench/README.md), e.g. BENCH_ARGS="--only warm,hold".
bench: $(BIN)/wakegate
	sh bench/install-tools.sh
	$(BIN)/python -m bench.all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .wakegate .pytest_cache .ruff_cache
