# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test install bench clean

$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wft needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

# The collector on 127.0.0.1:4318 with the embedded SQLite store (wft-data/); it follows
# ./.workflow-data or the world the SDK's env vars name, when there is one.
run: install
	$(BIN)/wft serve $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark under bench/, one run; prints the table and writes bench/results.md.
bench: $(BIN)/.bench
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
