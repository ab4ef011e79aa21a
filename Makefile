# Set-up and entry points. `make repro` and `make test` each create the virtual environment,
# install the pinned dependencies and make the data available first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
MIRROR := /usr/share/datasets/fashion-mnist
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install data-source repro robustness gpu-grid test test-all lint slurm-up slurm-down bench gpu-wheels gpu-check docs docs-serve

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


# The default's grid on a CUDA machine (conf/profile/fmnist_gpu.yaml -> results/fmnist_gpu), several
# runs sharing each GPU (params.yaml: local), then its analysis. No network, make install or DVC
# needed: pipelines/gpu_grid.py installs gpu_bundle/'s wheels only where the imports fail, prepares
# Fashion-MNIST from gpu_bundle/ or params.yaml's mirror, and stops within GPU_BUDGET seconds
# (exit status 3: runs pending; run it again, finished runs are kept). Its three files go to GPU_OUT.
GPU_BUDGET ?= 540
gpu-grid:
	python3 pipelines/gpu_grid.py --budget-s $(GPU_BUDGET) --out $(GPU_OUT) \
	  $(if $(wildcard $(GPU_BUNDLE)/fashion-mnist),,--mirror $(MIRROR)) $(if $(RESUME),--resume-from $(RESUME)); \
	  rc=$$?; test $$rc = 0 -o $$rc = 3 || exit $$rc; python3 pipelines/analyze.py --profile fmnist_gpu; exit $$rc

# `make test`: the unit tests, the one end-to-end DVC pipeline on the smoke profile that the
# tests share, and one SLURM sweep (minutes). `make test-all`: every test (CI runs it). The
# `slurm` tests run against the project's single-node SLURM cluster, started here when this user
# can (root: it installs Debian's packages and starts the daemons); otherwise they are left out.
QUICK := (not slow or e2e)
test: install data-source
	@$(call pytest_with_slurm,$(QUICK))

test-all: install data-source
	@$(call pytest_with_slurm,)

define pytest_with_slurm
if [ "$$(id -u)" = 0 ]; then bash tests/slurm/cluster.sh up && $(PY) -m pytest $(if $(1),-m "$(1)"); \
else echo "not root: cannot start SLURM here; running the tests without the slurm ones"; \
  $(PY) -m pytest -m "$(if $(1),$(1) and )not slurm"; fi
endef

# A single-node SLURM cluster on this machine (slurm-wlm, slurmdbd, munge, MariaDB; no systemd)
slurm-up:
	bash tests/slurm/cluster.sh up

slurm-down:
	bash tests/slurm/cluster.sh down

# Speed benchmarks (SVMax, VICReg terms, pretraining throughput): results/bench/{bench.json,BENCH.md}
bench: install
	$(PY) -m embreg.bench

# A GPU machine without network: `make gpu-wheels` here puts what it lacks in gpu_bundle/
# (git-ignored): the wheels for its Python 3.12 (antlr4 is published as a source archive only:
# built here, pure Python) and the Fashion-MNIST raw files. There, python3 pipelines/gpu_grid.py
# (the grid: the answer, first) and python3 pipelines/gpu_check.py (speed figures, five minutes,
# second) install them offline; each writes three flat files into GPU_OUT.
GPU_BUNDLE := gpu_bundle
GPU_OUT ?= $(GPU_BUNDLE)/out
# the versions `make install` resolves here (omegaconf is not pinned by pyproject.toml: the venv's);
# cloudpickle: submitit's own dependency
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0 \
	tabulate==0.10.0 cloudpickle==3.1.3
GPU_SDISTS := antlr4-python3-runtime==4.9.3

gpu-wheels: install
	rm -rf $(GPU_BUNDLE)/wheels $(GPU_BUNDLE)/fashion-mnist
	mkdir -p $(GPU_BUNDLE)/wheels $(GPU_BUNDLE)/fashion-mnist
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 -d $(GPU_BUNDLE)/wheels $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps -w $(GPU_BUNDLE)/wheels $(GPU_SDISTS)
	ls $(GPU_BUNDLE)/wheels/antlr4_python3_runtime-*-py3-none-any.whl >/dev/null  # pure Python: any 3.x
	cp $(MIRROR)/*-ubyte.gz $(GPU_BUNDLE)/fashion-mnist/
	@size=$$(du -sm $(GPU_BUNDLE)/wheels $(GPU_BUNDLE)/fashion-mnist | awk '{s += $$1} END {print s}'); \
	  echo "gpu_bundle: $$size MiB (kept under 48 MiB, so that it travels with the checkout)"; test $$size -lt 48

gpu-check:
	python3 pipelines/gpu_check.py --out $(GPU_OUT)

lint: install
	$(VENV)/bin/ruff check src tests pipelines

# The documentation site (mkdocs.yml, docs/): strict, so a broken link, anchor or repository path
# fails the build (tests/test_docs.py runs the same build). docs-serve: at http://127.0.0.1:8000
docs: install
	$(VENV)/bin/mkdocs build --strict

docs-serve: install
	$(VENV)/bin/mkdocs serve
