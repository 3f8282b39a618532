# The project's entry points. On a fresh machine each target does all its own set-up.
#   make book   build the book (default profile: fmnist) into _build/html and print the page to open
#   make test   everything CI checks (.ci/run calls exactly this)
# Other targets: setup, data, browser, notebooks, clean.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JB_FLAGS := -W -n --keep-going

.PHONY: book test setup data browser notebooks clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

## Virtual environment with the pinned requirements (and paperlib, editable).
setup: $(STAMP)

## Fashion-MNIST from Debian's dataset-fashion-mnist where apt and root are available.
data: $(STAMP)
	@if $(PY) -m paperlib data fashion-mnist | grep -q " found "; then \
	  $(PY) -m paperlib data fashion-mnist; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Fashion-MNIST from Debian (dataset-fashion-mnist)..."; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) && \
	  $(PY) -m paperlib data fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing and apt-get/root is not available here."; \
	  echo "Either run: sudo apt-get install dataset-fashion-mnist"; \
	  echo "or put the four IDX .gz files in a directory and export PAPERLIB_FMNIST_DIR=<that directory>,"; \
	  echo "or, where the network allows: $(PY) -m paperlib data --download fashion-mnist"; \
	  exit 1; \
	fi

## Headless Chromium for the browser test (skipped, with a message, where it cannot be installed).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's chromium for the browser test..."; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "chromium could not be installed: the browser test will be skipped"; \
	else echo "chromium is not installed and apt-get/root is not available: the browser test will be skipped"; fi

## The book: built from the committed notebooks and runs/ (no re-execution).
book: data
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)
	@echo
	@echo "Book built. Open: file://$(CURDIR)/_build/html/index.html"

## Everything CI checks: unit tests, strict nbval on the committed notebooks, the book build, the browser test.
test: data browser
	$(PY) -m pytest --nbval --nbval-sanitize-with book/nbval_sanitize.cfg -q

## Re-execute the committed notebooks in place (after changing code or runs/).
notebooks: data
	$(PY) -m paperlib.report.notebooks book/*.ipynb

clean:
	rm -rf _build
