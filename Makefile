# Two commands on a fresh machine: `make run` and `make test`. Both create .venv and install
# everything they need; nothing has to be installed by hand.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
BIN := $(VENV)/bin
# Installed under requirements.lock's pins (the image's): tests run what ships.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: run test lint types unit bench bench-deps bench-quick schema-snapshot lock clean

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.11 is required (python3.11+ on PATH)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import service, pytest, ruff, mypy' || { echo "make: installation failed"; exit 1; }
	@rm -f $(VENV)/.installed-* && touch $@

## run: start the whole service locally (embedded PostgreSQL, API, workers, simulator)
run: $(STAMP)
	$(BIN)/ai-service dev

## test: lint, format check, strict types, and the whole test suite
test: lint types unit

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

types: $(STAMP)
	$(BIN)/mypy --strict service bench

unit: $(STAMP)
	$(BIN)/pytest

BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,bench]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import pgqueuer' || { echo "make: installing the bench extra failed"; exit 1; }
	@rm -f $(VENV)/.bench-installed-* && touch $@

## bench-deps: the bench extra (PgQueuer, py-spy) on top of the dev install
bench-deps: $(BENCH_STAMP)

## bench: every benchmark (prints tables, writes bench/results/*.json), then the figures table
## in docs/benchmarks.md is refreshed from the JSON
bench: bench-deps
	$(BIN)/python -m bench all; rc=$$?; $(BIN)/python -m bench.report; exit $$rc

bench-quick: bench-deps
	$(BIN)/python -m bench all --quick; rc=$$?; $(BIN)/python -m bench.report; exit $$rc

## schema-snapshot: regenerate sql/schema.snapshot.sql after adding a migration
schema-snapshot: $(STAMP)
	UPDATE_SCHEMA_SNAPSHOT=1 $(BIN)/pytest -q tests/integration/test_migrations.py -k snapshot

## lock: after a dependency change in pyproject.toml, install the newest releases it allows
## (no pins) and write them to requirements.lock, which the image and every other install use
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python deploy/tools/lock.py > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
