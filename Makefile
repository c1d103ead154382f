# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo3d test test-fast test-multidevice lint format bench bench-sweep quickstart clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU build of torch first, so nothing pulls an unpinned one.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,examples,bench]"
	# Data-only and oracle-only packages: their own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps stardist segmentation-models-pytorch nilearn
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.unet.train $(ARGS)

# 3D U-Net on the MNI ICBM152 template (in the nilearn wheel); ARGS="--processes 2" etc.
demo3d: $(STAMP)
	$(BIN)/python -m examples.unet3d.train $(ARGS)

quickstart: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: $(STAMP)
	$(BIN)/python -m ruff check jaxseg tests examples bench
	# Includes tests/multiprocess, which starts its own 2-process JAX cluster (4 CPU devices each).
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile
	# Scale-out tests: a second process with 8 host devices (XLA reads the flag at start).
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 tests/multidevice

lint: $(STAMP)
	$(BIN)/python -m ruff check jaxseg tests examples bench
	$(BIN)/python -m ruff format --check jaxseg tests examples bench

format: $(STAMP)
	$(BIN)/python -m ruff format jaxseg tests examples bench
	$(BIN)/python -m ruff check --fix jaxseg tests examples bench

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-sweep: $(STAMP)
	$(BIN)/python -m bench.run --sweep

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
