# Set-up and the everyday commands. Everything installs into .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TEXT ?= where is my [MASK]?

.PHONY: install test lint fill-mask bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The test command CI runs (.ci/run): lint, then the suite (slow tests deselected).
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

fill-mask: install
	$(BIN)/albert-jax fill-mask "$(TEXT)"

bench: install
	$(BIN)/python benchmarks/bench_mlm_forward.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
