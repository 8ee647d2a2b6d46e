# One-command workflows. `make run` and `make test` set everything up on a
# fresh machine (virtualenv, dependencies, the default model) on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kmlx-setup

.PHONY: setup run lint test test-fast conformance bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m worker.models setup-blas   # fast CPU BLAS (apt as root on Debian/Ubuntu; a hint elsewhere)
	$(PY) -m worker.models fetch-default
	$(PY) -m worker.models build-tiny
	touch $(STAMP)

setup: $(STAMP)

run: setup            ## a gateway on :18000 and a worker on the default model
	$(PY) -m client.serve

lint: setup           ## ruff (style, bugs) and mypy (types), configured in pyproject.toml
	$(PY) -m ruff check .
	$(PY) -m mypy

test: setup lint      ## lint, then the full test suite (what CI runs)
	$(PY) -m pytest

test-fast: setup      ## every test that starts no process (pytest -m "not e2e")
	$(PY) -m pytest -m "not e2e"

conformance: setup    ## schemathesis against the official OpenAI spec
	$(PY) -m pytest tests/conformance

bench: setup          ## serving overhead and throughput, side by side
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
