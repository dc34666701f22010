# Gophermart: `make run` starts the system, `make test` runs the whole suite.
# Both create the virtualenv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: run test lint format postgres-binaries bench bench-smoke chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The suite and `make run` start their own PostgreSQL from its server
# binaries; install them when missing and we are allowed to (root, Debian).
postgres-binaries:
	@$(PYTHON) -c 'import sys; sys.path.insert(0, "."); from shared.localpg import find_bindir; find_bindir()' 2>/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         echo "installing PostgreSQL server binaries"; \
	         apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	       else echo "PostgreSQL server binaries not found: install postgresql" >&2; exit 1; fi; }

run: $(STAMP) postgres-binaries
	$(BIN)/gophermart

test: $(STAMP) postgres-binaries lint
	$(BIN)/pytest -q -p no:cacheprovider

# The long fault-injection run (tests/chaos/run.py: thousands of orders under
# injected 500s, latency, a tight rate limit and SIGKILLed workers, then an audit
# of every order and every point), and a larger schemathesis run.
chaos: $(STAMP) postgres-binaries
	$(BIN)/python -m tests.chaos.run
	FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider tests/chaos/test_fuzz_openapi.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (bench/): `bench` prints the full table and rewrites bench/RESULTS.md
# (about 4 minutes); `bench-smoke` runs every figure for a few seconds.
bench: $(STAMP) postgres-binaries
	$(BIN)/python -m bench

bench-smoke: $(STAMP) postgres-binaries
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
