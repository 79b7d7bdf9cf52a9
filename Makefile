# Set-up is part of every target: a local virtual environment is created on first use and
# reused after. torch is pinned to 2.13.0; where a CPU wheel lies on local disk (/opt/wheels)
# it is preferred, so a fresh machine never pulls the multi-GB CUDA build.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo walkthrough test lint browser bench clean

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

test: lint browser
	$(BIN)/pytest -q -m "not slow" -p no:cacheprovider

# The system browser the explorer's browser test drives (Debian's chromium; Playwright never
# downloads one). Installed where make runs as root (CI); elsewhere the test says it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "no chromium: tests/faults/test_explorer_browser.py will be skipped"

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
