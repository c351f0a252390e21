# umarvel-search: `make demo` runs the embedded stack end to end; `make test` runs the suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench services clean constraints

# torch is pinned with torchvision in pyproject.toml (the worker extra), so this one pip
# command installs the builds that lie on this machine's disk and never a different torch;
# constraints.txt holds every other runtime distribution at the version the images install.
# The HTTP client is a distribution of its own (client/) that the server depends on:
# installed in the same command, pip takes it from here and never looks for it on an index.
$(STAMP): pyproject.toml client/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ./client -e '.[worker,dev,tracing]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/umarvel demo

test: $(STAMP) services
	$(BIN)/pytest --durations=25

# The inner loop: no live stack (worker processes), no Milvus standalone server.
test-fast: $(STAMP) services
	$(BIN)/pytest -m "not integration and not standalone" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.encode

services:
	bash scripts/services.sh

# Refresh constraints.txt after changing a pin in pyproject.toml: install from pyproject's
# pins alone (the old constraints could contradict the new pin), then write down every
# runtime distribution at the version installed.
constraints:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ./client -e '.[worker,dev,tracing]'
	$(BIN)/python scripts/constraints.py --write
	touch $(STAMP)

clean:
	rm -rf .umarvel .pytest_cache .ruff_cache .mypy_cache
