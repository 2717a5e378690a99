# bmkt — the targets are the commands CI and the README use.
# `make help` lists them.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AS_OF  ?= 2024-06-30
CUSTOMERS ?= 5000
DAYS   ?= 540
SEED   ?= 42

.DEFAULT_GOAL := help
.PHONY: help install demo explore test test-fast lint bench bench-scoring clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing) and install bmkt with its dev tools

demo: $(STAMP)  ## simulate a demo store, load it into data/bmkt.duckdb, run the main job into reports/
	$(BIN)/bmkt simulate --customers $(CUSTOMERS) --days $(DAYS) --seed $(SEED) --end $(AS_OF) --out data/demo_store
	$(BIN)/bmkt ingest data/demo_store --db data/bmkt.duckdb --as-of $(AS_OF)
	$(BIN)/bmkt pipeline --as-of $(AS_OF) -p source data/bmkt.duckdb

test: $(STAMP)  ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

explore: $(STAMP)  ## open JupyterLab on the notebooks (run `make demo` first)
	$(BIN)/jupyter lab notebooks/

test-fast: $(STAMP)  ## the suite without notebooks and Spark
	$(BIN)/python -m pytest -q -m "not notebooks and not spark and not slow"

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check bmkt tests benchmarks
	$(BIN)/ruff format --check bmkt tests benchmarks

bench: $(STAMP)  ## the whole segment job at 1M customers vs plain lifetimes (simulates the store first; minutes)
	$(BIN)/python benchmarks/bench_job.py --customers 1000000

bench-scoring: $(STAMP)  ## customer-value scoring step by step, bmkt vs plain lifetimes (1M customers)
	$(BIN)/python benchmarks/bench_scoring.py

clean:  ## remove generated data and reports (keeps .venv)
	rm -rf data/demo_store data/*.duckdb data/*.duckdb.wal reports/*/
