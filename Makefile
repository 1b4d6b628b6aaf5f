# Every target sets itself up: a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-async test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the demo: a real crawl of the bundled bookstore, killed with SIGKILL, run again.
demo: $(STAMP)
	cd example_project && ../$(BIN)/python run_demo.py

## The same for an asyncio stage (AsyncCheckpointTracker).
demo-async: $(STAMP)
	$(BIN)/python example_project/async_stage_demo.py

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest

## ruff and mypy.
lint: $(STAMP)
	$(BIN)/ruff check scrapy_checkpoint tests benchmarks example_project
	$(BIN)/mypy

## Benchmarks (figures go to docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_updates.py
	$(BIN)/python benchmarks/bench_redis.py
	$(BIN)/python benchmarks/bench_postgres.py
	$(BIN)/python benchmarks/bench_resume.py
	$(BIN)/python benchmarks/bench_crawl.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
