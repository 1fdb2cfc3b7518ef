# medassist: every set-up step lives here. `make demo` runs the main job, `make test` the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared/data)
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-fast demo bench clean lock services

setup: $(STAMP)

# The lock pins every package (torch 2.13.0+cpu comes from the local wheel directory that pip
# is configured with on these machines). --no-deps: nothing outside the lock is installed.
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup services lint
	MEDASSIST_SHARED_DATA=$(SHARED) $(BIN)/python -m pytest -q

# Debian packages the tests need: PostgreSQL 15 and Orthanc (started by the tests on loopback),
# Chromium (driven headless by Playwright in the UI tests), dicom3tools (dciodvfy checks the SR).
services:
	command -v /usr/lib/postgresql/15/bin/initdb >/dev/null || (apt-get update && apt-get install -y postgresql)
	command -v Orthanc >/dev/null || (apt-get update && apt-get install -y orthanc orthanc-dicomweb)
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	command -v dciodvfy >/dev/null || (apt-get update && apt-get install -y dicom3tools)

test-fast: setup
	MEDASSIST_SHARED_DATA=$(SHARED) $(BIN)/python -m pytest -q -m "not slow" -x

# The clinician review app on SQLite (out/demo/medassist.db): a few generated studies drafted by
# the shipped demo model, demo users (passwords printed, kept in out/demo/credentials.txt), then
# `medassist serve` on http://127.0.0.1:7860 (docs/ui.md).
demo: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/medassist serve --demo out/demo \
		--checkpoint models/demo --cases 4 --host 127.0.0.1 --port 7860

bench: setup
	$(BIN)/python bench/ingest.py

# Regenerate the lock from the current venv (after deliberately adding a dependency).
lock:
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -vE '^(medassist|pip)==' > requirements.lock

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
