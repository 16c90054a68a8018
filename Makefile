# Set-up and the everyday commands. Everything installs into .venv on first use: the
# package alone for the main job, plus the test extra for the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TEXT ?= where is my [MASK]?

.PHONY: install install-test system-deps test lint fill-mask bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

# PostgreSQL and Chromium for the serving tests (apt-get, when missing).
system-deps:
	tools/system-deps.sh

# The test command CI runs (.ci/run): lint, then the suite (slow tests deselected), on
# TEST_WORKERS processes (pytest-xdist), each test file whole on one of them (its
# module-scoped fixtures are built once), handed out in collection order: the longest
# files first (tests/conftest.py, LONGEST_FIRST).
TEST_WORKERS ?= 2
test: install-test system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install-test
	$(BIN)/ruff check .

fill-mask: install
	$(BIN)/albert-jax fill-mask "$(TEXT)"

bench: install-test
	$(BIN)/python benchmarks/bench_mlm_forward.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
