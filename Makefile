# The two set-up commands: `make run` and `make test`. Both create the virtual
# environment and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= examples/wakegate.yaml
PYTEST_ARGS ?=

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

bench: $(BIN)/wakegate
	$(BIN)/python -m bench.coldstart --runs 30 --json bench/results/coldstart.json
	$(BIN)/python -m bench.kubernetes --runs 30 --failovers 5 --json bench/results/kubernetes.json

clean:
	rm -rf $(VENV) .wakegate .pytest_cache .ruff_cache
