# The book's two commands (see README.md):
#   make book   set up .venv, execute the notebooks whose source or parameters changed, build _build/html
#   make test   set up .venv, then everything CI checks
# Both create or reuse the virtual environment from requirements.txt on their own.
# Helpers: make smoke (full profile cut to a handful of images, CPU), make gpu-check (needs CUDA;
# `make gpu-check BIN=/path/to/env/bin` runs in an existing environment instead of .venv),
# make book PROFILE=full (writes _build/full/ and results/*.full.json, never the committed notebooks).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN ?= $(VENV)/bin
# Building .venv is skipped when BIN points at another environment.
ENV_TARGET := $(if $(filter $(VENV)/bin,$(BIN)),env,)
PROFILE ?= tiny
TIMED := .ci/timed
ENV_STAMP := $(VENV)/.requirements.sha256
# Free disk a new .venv needs: the pinned torch is a CUDA build (6.7 GiB measured for the whole environment).
VENV_GIB := 7
REQ_SHA := $(shell sha256sum requirements.txt | cut -c1-64)
JB_FLAGS := -W -n --keep-going
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: book test env notebooks scoreboard html unit realdata nbval smoke gpu-check html-check screenshots benchmark clean student

book: $(ENV_TARGET)
	@$(TIMED) "execute changed notebooks (PROFILE=$(PROFILE))" $(BIN)/python -m tools.run_notebooks --profile $(PROFILE)
	@$(MAKE) --no-print-directory html BIN=$(BIN)

test: env
	@$(MAKE) --no-print-directory --keep-going unit realdata nbval smoke html html-check screenshots

env:
	@if [ "$$(cat $(ENV_STAMP) 2>/dev/null)" != "$(REQ_SHA)" ]; then \
	  $(TIMED) "set up $(VENV) from requirements.txt" bash -c '\
	    set -euo pipefail; test -x $(BIN)/python || { $(PYTHON) tools/disk_space.py $(VENV) $(VENV_GIB); \
	      $(PYTHON) -m venv $(VENV); }; \
	    $(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 \
	      | { grep -v "^WARNING: Location" || true; }; \
	    echo "$(REQ_SHA)" > $(ENV_STAMP)'; \
	else echo "=== $(VENV) is up to date with requirements.txt"; fi

unit:
	@$(TIMED) "unit tests" $(BIN)/pytest -m "not realdata and not builthtml" -q

realdata:
	@$(TIMED) "real-data tests (skipped without CVBOOK_DATA)" $(BIN)/pytest -m realdata -q -rs

# Notebooks are re-run exactly as committed: tiny profile, no data directory.
nbval:
	@$(TIMED) "notebooks (nbval)" env -u CVBOOK_DATA CVBOOK_PROGRESS=0 $(BIN)/pytest $(NBVAL_FLAGS) -q notebooks

# Every chapter's full profile on generated stand-ins and random stand-in weights (tools/smoke.py).
smoke: $(ENV_TARGET)
	@$(TIMED) "smoke run of the full profile (CPU)" $(BIN)/python -m tools.smoke

# Tiny profile on CUDA vs the committed CPU numbers, nbval (lax), smoke run on CUDA (tools/gpu_check.py).
gpu-check: $(ENV_TARGET)
	@$(TIMED) "GPU check" $(BIN)/python -m tools.gpu_check

# Data of the full profile (tools/fetch_data.py): `make data ARGS=--plan` lists what each chapter needs,
# where it goes and the free disk; `make data` fetches it (verified, resumable, mirrors);
# ARGS=--check re-hashes what is there; ARGS="--chapters 06 07" narrows it to chapters.
.PHONY: data linkcheck
data: $(ENV_TARGET)
	@$(BIN)/python -m tools.fetch_data $(ARGS)

# Registry URLs (reachable, size as registered) and the pages' external links; needs the network
# (weekly workflow .github/workflows/linkcheck.yml; make test checks the tool on a local server).
linkcheck: $(ENV_TARGET)
	@$(TIMED) "link health (registry URLs and the book's links)" $(BIN)/python -m tools.linkcheck $(ARGS)

scoreboard:
	@$(BIN)/python -m tools.scoreboard

# The chapters without their solutions and answer cells, outputs cleared (tools/student.py);
# the book build also writes them into the site (_build/html/student/) and links them.
student:
	@$(BIN)/python -m tools.student --output _build/student

# Book build with execution off (notebooks are committed executed).
html: scoreboard
	@rm -rf _build/html _build/jupyter_execute _build/.doctrees
	@$(TIMED) "book build (jupyter-book 1, warnings as errors)" $(BIN)/jupyter-book build . $(JB_FLAGS)
	@test -f _build/html/index.html || { echo "ERROR: _build/html/index.html missing (is jupyter-book < 2 installed?)"; exit 1; }
	@echo "book: _build/html/index.html"

# What a reader sees in the built book (tests/test_built_html.py): tables, noise, figure sizes, runtimes.
html-check:
	@$(TIMED) "checks over the built HTML" $(BIN)/pytest -m builthtml -q -p no:cacheprovider

# Every page in headless Chromium: screenshots in _build/screenshots, fails on console errors.
screenshots:
	@$(TIMED) "pages in headless Chromium" $(BIN)/python -m tools.screenshots

benchmark: env
	@$(TIMED) "benchmarks" $(BIN)/pytest tests/benchmarks -q -p no:cacheprovider --benchmark-only -o python_files='bench_*.py'

clean:
	rm -rf _build .pytest_cache
