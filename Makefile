# Set-up is part of every target: a local virtual environment is created on first use and
# reused after. torch is pinned to 2.13.0; where a CPU wheel lies on local disk (/opt/wheels)
# it is preferred, so a fresh machine never pulls the multi-GB CUDA build.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo walkthrough test lint browser postgres bench clean

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install --quiet $(PIP_FLAGS) -e '.[dev]'
	@touch $@

# The whole consortium in one command: four real nodes train, the chain is verified.
demo: $(BIN)/.installed
	$(BIN)/bcfl demo

# The step-by-step walkthrough (identities, consortium file, init, verify-chain, tamper).
walkthrough: $(BIN)/.installed
	BCFL=$(BIN)/bcfl bash scripts/quickstart.sh

lint: $(BIN)/.installed
	$(BIN)/ruff check bcfl_cli tests bench
	$(BIN)/ruff format --check bcfl_cli tests bench
	$(BIN)/mypy --strict bcfl_cli

# Debian puts PostgreSQL's binaries outside PATH (/usr/lib/postgresql/VERSION/bin).
PG_PATH = $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ':')

# On both of CI's two cores (pytest-xdist, one worker a core): the real multi-process tests
# (marked `network`: node processes on loopback) form one group that one worker runs one after
# another, as before, and first, while the other worker takes the single-node ones (marked
# `lone_node` too) and then the in-process tests a file at a time (tests/lanes.py sets the
# groups and the order).
#
# bcfl_cli's bytecode is compiled once first: where PYTHONDONTWRITEBYTECODE is set (as on the
# development machine) no process writes it, and each of the ~120 node processes and ~100 CLI
# commands a run starts compiled bcfl's sources again (~0.25 CPU-s a node start; bench/README.md,
# session 12). Processes still read bytecode with the variable set.
test: lint browser postgres
	$(BIN)/python -m compileall -q bcfl_cli
	PATH="$(PG_PATH)$$PATH" $(BIN)/pytest -q -m "not slow" -p no:cacheprovider --durations=30 \
		-n 2 --dist loadgroup --no-loadscope-reorder

# The system browser the explorer's browser test drives (Debian's chromium; Playwright never
# downloads one). Installed where make runs as root (CI); elsewhere the test says it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "no chromium: tests/faults/test_explorer_browser.py will be skipped"

# PostgreSQL's server binaries (initdb, pg_ctl) for the PostgreSQL half of the store suite:
# tests/store_backends.py starts a throwaway server with them, as an unprivileged user, and stops
# it. Installed (Debian's postgresql) where make runs as root (CI); elsewhere the tests say they
# are skipped, except with CI set, where they fail. BCFL_TEST_POSTGRES_URL names a server instead.
postgres:
	@{ command -v initdb && command -v pg_ctl; } >/dev/null \
		|| ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -qq \
			&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
		|| echo "no PostgreSQL binaries: the PostgreSQL store tests will be skipped"

# Benchmarks (bench/README.md): every bench in its quick mode, with ratios to its baseline.
bench: $(BIN)/.installed
	$(BIN)/python bench/run_all.py --quick

# The Flower comparison needs flwr[simulation] (the optional `bench` extra), kept out of the
# main environment: it lives in its own virtual environment.
BENCH_VENV ?= .venv-bench
.PHONY: bench-flower
$(BENCH_VENV)/bin/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 2; }
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet $(PIP_FLAGS) --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet $(PIP_FLAGS) -e '.[bench]'
	@touch $@

bench-flower: $(BENCH_VENV)/bin/.installed
	$(BENCH_VENV)/bin/python bench/flower_compare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
