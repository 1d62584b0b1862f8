# The commands the README names. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/jobapi_test

.PHONY: serve test test-sqlite test-postgresql screenshots bench bench-curve clean

# jobapi in the virtualenv (editable), with what it needs to serve and nothing more.
$(BIN)/.installed-serve: setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# jobapi with the test suite's packages: what the tests and benchmarks run in.
$(BIN)/.installed: setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## serve: migrate the database (the embedded SQLite file unless DATABASE_URL is set) and start gunicorn
serve: $(BIN)/.installed-serve
	$(BIN)/jobapi db upgrade
	$(BIN)/gunicorn wsgi:app

## test: the whole suite on SQLite, then on PostgreSQL (TEST_DATABASE_URL)
# The two halves note in build/missing-tools what they skipped for a missing program,
# so that the last line of the run names all of it (tests/conftest.py).
test: $(BIN)/.installed
	@mkdir -p build && rm -f build/missing-tools
	@$(MAKE) --no-print-directory test-sqlite test-postgresql MISSING_TOOLS_FILE=build/missing-tools

test-sqlite: $(BIN)/.installed
	env -u TEST_DATABASE_URL MISSING_TOOLS_FILE='$(MISSING_TOOLS_FILE)' $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgresql: $(BIN)/.installed
	TEST_DATABASE_URL='$(TEST_DATABASE_URL)' MISSING_TOOLS_FILE='$(MISSING_TOOLS_FILE)' $(BIN)/python -m pytest $(PYTEST_ARGS)

## screenshots: the console's pictures in docs/screenshots/ (the browser tests save them in build/screenshots/ otherwise)
screenshots: $(BIN)/.installed
	env -u TEST_DATABASE_URL SCREENSHOTS_DIR=docs/screenshots $(BIN)/python -m pytest tests/test_console_browser.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

## bench: the benchmark suite against a real gunicorn on PostgreSQL (prints a table)
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## bench-curve: the concurrency curve (1 to 256 connections, direct and through nginx)
bench-curve: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py --only curve $(BENCH_ARGS)
