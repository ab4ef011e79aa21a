# Set-up and entry points. `make repro` and `make test` each create the virtual environment,
# install the pinned dependencies and make the data available first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
MIRROR := /usr/share/datasets/fashion-mnist
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install data-source repro test lint bench clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Offline data: Debian's dataset-fashion-mnist installs the idx files under $(MIRROR).
# Installed when we can (root with apt); otherwise prepare falls back to downloading.
data-source:
	@if [ ! -d $(MIRROR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: could not install dataset-fashion-mnist; prepare will try to download"; fi

# FORCE=1 retrains every run (dvc repro --force alone keeps finished runs: they are persisted)
repro: install data-source
	$(if $(FORCE),EMBREG_RETRAIN=1 dvc repro --force,dvc repro)

test: install data-source
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests pipelines
