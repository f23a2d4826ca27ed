# dsq-chain: `make demo` runs the whole grid on one machine; `make test` runs every test.
# Both set up what is missing first (a venv in .venv, npm packages from package-lock.json).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test lint typecheck unit build build-check docs bench gas clean

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): pyproject.toml setup.py dsq_chain/matching/_search.c  # the install compiles the matcher's search
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(STAMP_NODE): package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup  ## make demo DEMO_ARGS=--keep keeps the grid and its dashboard up until Ctrl-C
	$(PY) -m dsq_chain.demo $(DEMO_ARGS)

test: setup lint typecheck
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check dsq_chain tests benchmarks

typecheck: $(STAMP_PY)
	$(VENV)/bin/mypy

build: setup
	$(PY) -m dsq_chain.artifacts.build

build-check: setup
	$(PY) -m dsq_chain.artifacts.build --check

docs: $(STAMP_PY)  # docs/api.md from the SDK's docstrings
	$(PY) -m dsq_chain.sdk.apidoc

gas: setup
	$(PY) benchmarks/gas.py

bench: setup
	$(PY) benchmarks/gas.py
	$(PY) benchmarks/matcher.py

clean:
	rm -rf $(VENV) .venv-ape node_modules .solc-bin .pytest_cache .mypy_cache .ruff_cache build
	rm -f dsq_chain/matching/_search.*.so
