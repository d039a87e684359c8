# Every target creates the virtual environment itself: a fresh clone needs only Python 3.11+.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: venv test test-fast lint format demo bench dashboard screenshot notebooks clean

# Two makes at once in one checkout (two `make test` side by side) must not install into
# one venv together: the install holds the venv's lock alone (flock -x), a test run holds it
# shared (flock -s), so a second make waits, then finds the stamp newer than pyproject.toml
# and installs nothing; and no install replaces packages under a running suite. Without
# flock (not Linux) the targets run unlocked, as before.
FLOCK := $(shell command -v flock 2>/dev/null)
LOCKFILE := $(VENV).lock
INSTALL_LOCK := $(if $(FLOCK),$(FLOCK) -x $(LOCKFILE))
RUN_LOCK := $(if $(FLOCK),$(FLOCK) -s $(LOCKFILE))

$(STAMP): pyproject.toml
	$(INSTALL_LOCK) sh -c '[ "$(STAMP)" -nt pyproject.toml ] && exit 0; \
	  $(PY) -m venv $(VENV) && \
	  $(BIN)/python -m pip install -q --upgrade pip && \
	  $(BIN)/python -m pip install -q -e . --group dev && \
	  touch $(STAMP)'

venv: $(STAMP)

## make test: the whole suite (unit, golden, integration against loopback stand-ins)
## (no pytest cache: two runs side by side would write one .pytest_cache/ at once)
test: venv
	$(RUN_LOCK) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -p no:cacheprovider

## make test-fast: skip the slow integration tier
test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

lint: venv
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix src tests benchmarks notebooks
	$(BIN)/ruff format src tests benchmarks notebooks

## make demo: generate the sandbox world, serve it on loopback, run `churn run` end to end
demo: venv
	$(BIN)/churn sandbox demo $(DEMO_ARGS)

## make bench: the benchmark suite; figures printed and written to benchmarks/results.json
bench: venv
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## make dashboard: the Streamlit dashboard on 127.0.0.1:8501 over CHURN_DB's read copy
## (default: the demo's warehouse, data/demo.duckdb; run make demo first)
DASHBOARD_DB ?= $(or $(CHURN_DB),data/demo.duckdb)
dashboard: venv
	$(BIN)/churn --db $(DASHBOARD_DB) dashboard $(DASHBOARD_ARGS)

## make screenshot: a headless Chromium PNG of every page (Debian's /usr/bin/chromium),
## each checked not blank, into SCREENSHOT_DIR
SCREENSHOT_DIR ?= data/screenshots
screenshot: venv
	$(BIN)/python -m churn.dashboard.screenshot --db $(DASHBOARD_DB) --out $(SCREENSHOT_DIR)

## make notebooks: each notebooks/*.py (a jupytext pairing) as an executed .ipynb in
## NOTEBOOK_DIR, over DASHBOARD_DB's warehouse (run make demo first)
NOTEBOOK_DIR ?= data/notebooks
notebooks: venv
	mkdir -p $(NOTEBOOK_DIR)
	CHURN_DB=$(DASHBOARD_DB) $(BIN)/python -c "import sys, jupytext, nbformat; \
	from nbclient import NotebookClient; nb = jupytext.read(sys.argv[1]); \
	NotebookClient(nb, timeout=600, kernel_name='python3').execute(); nbformat.write(nb, sys.argv[2])" \
	notebooks/churn_overview.py $(NOTEBOOK_DIR)/churn_overview.ipynb

clean:
	rm -rf $(VENV) $(LOCKFILE) data .pytest_cache .mypy_cache .ruff_cache
