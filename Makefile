# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
# `make lint` is the gate CI runs before the tests: ruff (lint + format) and mypy --strict.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint install bench clean

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

# Lint and format over the whole tree; strict types over the packages (pyproject: [tool.mypy] files).
# All three run, so one pass shows every finding; the target fails if any of them did.
lint: install
	@rc=0; \
	$(BIN)/ruff check . || rc=1; \
	$(BIN)/ruff format --check . || rc=1; \
	$(BIN)/mypy --strict || rc=1; \
	exit $$rc

# The fuzz suite at length: 10^5 structure-aware mutations of real OTLP and Sentry bodies against a
# real `wft serve` (CI runs 3,000). FUZZ_CASES and FUZZ_SEED override; answers by status are printed
# and written to test-artifacts/fuzz-summary-<cases>.json.
.PHONY: fuzz
FUZZ_CASES ?= 100000
FUZZ_SEED  ?= 20261122
fuzz: install
	WFT_FUZZ_CASES=$(FUZZ_CASES) WFT_FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -s -p no:cacheprovider tests/test_fuzz.py

# Every benchmark under bench/, one run; prints the table and writes bench/results.md.
bench: $(BIN)/.bench
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
