# umarvel-search: `make demo` runs the embedded stack end to end; `make test` runs the suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench services clean

# torch is pinned with torchvision in pyproject.toml, so this one pip command installs
# the builds that lie on this machine's disk and never a different torch. The HTTP client
# is a distribution of its own (client/) that the server depends on: installed in the same
# command, pip takes it from here and never looks for it on an index.
$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ./client -e '.[dev]'
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

clean:
	rm -rf .umarvel .pytest_cache .ruff_cache .mypy_cache
