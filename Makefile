# The book's two commands (see README.md):
#   make book   set up .venv, execute the notebooks whose source or parameters changed, build _build/html
#   make test   set up .venv, then everything CI checks
# Both create or reuse the virtual environment from requirements.txt on their own.
# Helpers: make smoke (full profile cut to a handful of images, CPU), make gpu-check (needs CUDA;
# `make gpu-check BIN=/path/to/env/bin` runs in an existing environment instead of .venv),
# make book PROFILE=full (every chapter, going on past missing data or a failure, then one table:
# chapter | ran / missing / failed | time; writes _build/full/ and results/*.full.json, both ignored by
# git, never the committed notebooks; the HTML is built anyway and the exit status is 0 only when
# every chapter ran), make stress (nbval of 05 and 06 beside a busy loop on every core, and on one thread).
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
# nbval's runs record their results under _build, never in the tracked results/.
NBVAL_ENV := env -u CVBOOK_DATA CVBOOK_PROGRESS=0 CVBOOK_RESULTS=$(CURDIR)/_build/nbval/results
STRESS_NOTEBOOKS := notebooks/05_mobilenet.ipynb notebooks/06_padim.ipynb

.PHONY: book test env notebooks scoreboard html unit realdata nbval smoke gpu-check html-check screenshots benchmark clean student stress

# A tiny run stops at a failing notebook. PROFILE=full builds the HTML even when a chapter did not run
# (the scoreboard shows the chapters that did), then exits with the run's status.
book: $(ENV_TARGET)
	@status=0; $(TIMED) "execute changed notebooks (PROFILE=$(PROFILE))" $(BIN)/python -m tools.run_notebooks --profile $(PROFILE) || status=$$?; \
	if [ $$status -ne 0 ] && [ "$(PROFILE)" != full ]; then exit $$status; fi; \
	$(MAKE) --no-print-directory html BIN=$(BIN); \
	if [ $$status -ne 0 ]; then echo "book: HTML built, but not every chapter ran (see the table above)"; fi; \
	exit $$status

test: env
	@$(MAKE) --no-print-directory --keep-going unit realdata nbval smoke html html-check screenshots stress

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
	@$(TIMED) "notebooks (nbval)" $(NBVAL_ENV) $(BIN)/pytest $(NBVAL_FLAGS) -q notebooks

# The notebook tests of 05 and 06 (a) beside a busy loop on every core, (b) with OMP_NUM_THREADS=1
# and the other BLAS thread variables at 1 (tools/stress.py); both run, and either failing fails.
stress:
	@status=0; \
	$(TIMED) "nbval of 05, 06 beside a busy loop on every core" $(BIN)/python -m tools.stress load -- \
	  $(NBVAL_ENV) $(BIN)/pytest $(NBVAL_FLAGS) -q $(STRESS_NOTEBOOKS) || status=1; \
	$(TIMED) "nbval of 05, 06 on one thread" $(BIN)/python -m tools.stress one-thread -- \
	  $(NBVAL_ENV) $(BIN)/pytest $(NBVAL_FLAGS) -q $(STRESS_NOTEBOOKS) || status=1; \
	exit $$status

# Every chapter's full profile on generated stand-ins and random stand-in weights (tools/smoke.py).
smoke: $(ENV_TARGET)
	@$(TIMED) "smoke run of the full profile (CPU)" $(BIN)/python -m tools.smoke

# Tiny profile on CUDA vs the committed CPU numbers and the smoke run on CUDA, GPU_JOBS notebooks at
# once, then nbval (lax); one summary table and _build/gpu/summary.json (tools/gpu_check.py).
# GPU_CHECK_FLAGS=--write-results also records results/gpu-check.json.
GPU_JOBS ?= 4
gpu-check: $(ENV_TARGET)
	@$(TIMED) "GPU check" $(BIN)/python -m tools.gpu_check --jobs $(GPU_JOBS) $(GPU_CHECK_FLAGS)

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

# Mutation score per module (mutmut, one child; slow, so not part of make test): results/mutation.md.
MUTATE ?= cam saliency padim anomaly registry
.PHONY: mutation
mutation: env
	@$(TIMED) "mutation testing of $(MUTATE)" $(BIN)/python -m tools.mutation $(MUTATE)

clean:
	rm -rf _build .pytest_cache
