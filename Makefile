# Gophermart: `make run` starts the system, `make test` runs the whole suite.
# Both create the virtualenv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: run test test-browser browser-deps lint format lock lock-upgrade compose-check \
	postgres-binaries bench bench-smoke bench-scale chaos clean

# Installs take exact versions with their hashes from requirements/dev.lock, never
# whatever the index has today; the project itself goes in editable, without deps.
$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements/dev.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

PIP = $(BIN)/pip install --quiet --disable-pip-version-check

# After changing dependencies in pyproject.toml: `make lock` rewrites the lock files,
# keeping every pin that still fits (`make lock-upgrade` moves all to the newest).
# dev.lock (everything: runtime, [dev], build backend) is resolved first; the
# image's runtime.lock and build.lock are resolved within it, so they pin the very
# versions the suite ran with.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock' $(UV_FLAGS)
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock: $(STAMP)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --extra dev -o requirements/dev.lock
	$(UV_COMPILE) pyproject.toml -c requirements/dev.lock -o requirements/runtime.lock
	$(BUILD_REQUIRES) | $(UV_COMPILE) - -c requirements/dev.lock -o requirements/build.lock

lock-upgrade:
	$(MAKE) lock UV_FLAGS=--upgrade

# The suite and `make run` start their own PostgreSQL from its server
# binaries; install them when missing and we are allowed to (root, Debian).
postgres-binaries:
	@$(PYTHON) -c 'import sys; sys.path.insert(0, "."); from shared.localpg import find_bindir; find_bindir()' 2>/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         echo "installing PostgreSQL server binaries"; \
	         apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	       else echo "PostgreSQL server binaries not found: install postgresql" >&2; exit 1; fi; }

# The customer page's tests (tests/browser) drive Debian's Chromium through its
# chromedriver and check accessibility with axe-core from npm (pinned in
# tests/browser/package-lock.json); install what is missing (root, Debian).
BROWSER_DIR = tests/browser
AXE         = $(BROWSER_DIR)/node_modules/axe-core/axe.min.js
APT_GET     = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

browser-deps: $(AXE)
	@{ command -v chromium && command -v chromedriver; } >/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         echo "installing Chromium and its chromedriver"; \
	         $(APT_GET) chromium chromium-driver >/dev/null; \
	       else echo "chromium and chromedriver not found: install chromium chromium-driver" >&2; exit 1; fi; }

$(AXE): $(BROWSER_DIR)/package-lock.json
	@command -v npm >/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         echo "installing npm"; $(APT_GET) npm >/dev/null; \
	       else echo "npm not found: install npm" >&2; exit 1; fi; }
	npm ci --prefix $(BROWSER_DIR) --no-audit --no-fund --silent
	touch $@

run: $(STAMP) postgres-binaries
	$(BIN)/gophermart

# BROWSER_TESTS=required: a browser test fails, rather than skips, without Chromium.
# The benchmark smoke run (about a minute) is a benchmark: `make bench-smoke`.
test: $(STAMP) postgres-binaries browser-deps lint
	BROWSER_TESTS=required $(BIN)/pytest -q -p no:cacheprovider --ignore=tests/test_bench_smoke.py

# Only the page's tests in the browser (make test runs them too); screenshots of
# every step land in test-artifacts/browser/.
test-browser: $(STAMP) postgres-binaries browser-deps
	BROWSER_TESTS=required $(BIN)/pytest -q -p no:cacheprovider tests/browser

# The long fault-injection run (tests/chaos/run.py: thousands of orders under
# injected 500s, latency, a tight rate limit and SIGKILLed workers, then an audit
# of every order and every point), and a larger schemathesis run.
chaos: $(STAMP) postgres-binaries
	$(BIN)/python -m tests.chaos.run
	FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider tests/chaos/test_fuzz_openapi.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (bench/): `bench` prints the full table and rewrites bench/RESULTS.md
# (about 4 minutes); `bench-smoke` runs every figure for a few seconds and checks
# that each row is printed and trustworthy (tests/test_bench_smoke.py).
bench: $(STAMP) postgres-binaries
	$(BIN)/python -m bench

bench-smoke: $(STAMP) postgres-binaries
	$(BIN)/pytest -q -p no:cacheprovider tests/test_bench_smoke.py

# The scale benchmark (bench/scale.py, about 15 minutes): seeds a large shop (1 M customers,
# 10 M orders, 10 M ledger entries) and measures every figure there next to an empty
# database; rewrites its part of bench/RESULTS.md.
bench-scale: $(STAMP) postgres-binaries
	$(BIN)/python -m bench.scale

# The image and the compose stack on a real Docker engine (deploy/compose_check.py):
# build, a customer's flow, 4 workers all taking work, non-root processes, JSON logs,
# stop times. Needs a Docker engine with the base images, so not part of `make test`.
compose-check: $(STAMP)
	$(BIN)/python -m deploy.compose_check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(BROWSER_DIR)/node_modules test-artifacts
