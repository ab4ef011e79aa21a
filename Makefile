# Set-up and entry points. `make repro` and `make test` each create the virtual environment,
# install the pinned dependencies and make the data available first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
MIRROR := /usr/share/datasets/fashion-mnist
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install data-source repro robustness test lint slurm-up slurm-down bench

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

# The default profile's pipeline (prepare, sweep, analyze). FORCE=1 retrains every run (dvc repro
# --force alone keeps finished runs: they are persisted)
repro: install data-source
	$(if $(FORCE),EMBREG_RETRAIN=1 dvc repro --force analyze,dvc repro analyze)

# The robustness studies (learning rate, batch size): conf/profile/robustness.yaml -> results/robustness
robustness: install data-source
	$(if $(FORCE),EMBREG_RETRAIN=1 dvc repro --force robustness_analyze,dvc repro robustness_analyze)

# The `slurm` tests run against the project's single-node SLURM cluster, started here when
# this user can (root: it installs Debian's packages and starts the daemons).
test: install data-source
	@if [ "$$(id -u)" = 0 ]; then bash tests/slurm/cluster.sh up && $(PY) -m pytest; \
	else echo "not root: cannot start SLURM here; running the tests without the slurm ones"; \
	  $(PY) -m pytest -m "not slurm"; fi

# A single-node SLURM cluster on this machine (slurm-wlm, slurmdbd, munge, MariaDB; no systemd)
slurm-up:
	bash tests/slurm/cluster.sh up

slurm-down:
	bash tests/slurm/cluster.sh down

# Speed benchmarks (SVMax, VICReg terms, pretraining throughput): results/bench/{bench.json,BENCH.md}
bench: install
	$(PY) -m embreg.bench

lint: install
	$(VENV)/bin/ruff check src tests pipelines
