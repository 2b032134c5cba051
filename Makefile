# Two commands from a fresh clone: `make demo` and `make test`. Everything installs into .venv/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Jobs call `ghanet`, so the venv's bin goes first on PATH (also for SLURM jobs, which inherit it).
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast lint clean-demo

# envs/install-venv.sh: uv when it installs (about 3x faster), else pip; GHANET_PIP=1 forces pip.
$(STAMP): pyproject.toml requirements-pins.txt envs/install-venv.sh
	bash envs/install-venv.sh $(PYTHON) $(VENV)
	touch $(STAMP)

install: $(STAMP)

# The demo's slides are small, so one thread per features/train job and two jobs side by
# side beat two threads per job (torch import and model build are single-threaded).
demo: install
	$(BIN)/snakemake --cores $(CORES) --set-threads features=1 train_fold=1 train_model=1
	@echo
	@echo "Demo finished. Outputs are in $(abspath results)/ ; open $(abspath results)/report/index.html"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: install
	$(BIN)/snakemake --lint

clean-demo:
	rm -rf results demo_data .snakemake
