# The commands the README names. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/jobapi_test

.PHONY: serve test test-sqlite test-postgresql bench bench-curve clean

$(BIN)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## serve: migrate the database (the embedded SQLite file unless DATABASE_URL is set) and start gunicorn
serve: $(BIN)/.installed
	$(BIN)/flask --app jobapi db upgrade
	$(BIN)/gunicorn wsgi:app

## test: the whole suite on SQLite, then on PostgreSQL (TEST_DATABASE_URL)
test: test-sqlite test-postgresql

test-sqlite: $(BIN)/.installed
	env -u TEST_DATABASE_URL $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgresql: $(BIN)/.installed
	TEST_DATABASE_URL='$(TEST_DATABASE_URL)' $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) src/*.egg-info .pytest_cache

## bench: the benchmark suite against a real gunicorn on PostgreSQL (prints a table)
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## bench-curve: the concurrency curve (1 to 256 connections, direct and through nginx)
bench-curve: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py --only curve $(BENCH_ARGS)
