# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
# `make test-min` runs on the oldest supported Python; `make test-newest` on the newest found.
PYTHON_MIN ?= python3.11
# The first interpreter that runs and is >= 3.12 (pyenv's shims exist but may refuse to run).
PYENV_PYTHONS := $(foreach v,3.14 3.13 3.12,$(wildcard $(HOME)/.pyenv/versions/$(v)*/bin/python3))
NEWEST_CANDIDATES := python3.14 python3.13 python3.12 $(PYENV_PYTHONS)
PYTHON_NEWEST ?= $(firstword $(foreach p,$(NEWEST_CANDIDATES),$(shell \
	$(p) -c "import sys; assert sys.version_info >= (3, 12)" 2>/dev/null && echo $(p))))
# The tools the test suite needs besides the library (no oracle: torch, MONAI, optax, flax).
TEST_TOOLS := "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100"
PYTEST := -m pytest -q -p no:cacheprovider
MULTIDEVICE := XLA_FLAGS=--xla_force_host_platform_device_count=8

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo3d test test-min test-newest docs docs-serve lint format bench bench-sweep quickstart clean

# The development environment: the library, the test oracles, the examples and the docs.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU build of torch first, so nothing pulls an unpinned one.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,examples,bench,docs]"
	# Data-only and oracle-only packages: their own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps stardist segmentation-models-pytorch nilearn
	touch $(STAMP)

# The demo's own environment: the library with its `examples` extra, no test oracles.
DEMO_VENV := .venv-demo
$(DEMO_VENV)/.installed: pyproject.toml Makefile
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e ".[examples]"
	# The demos' data, read as files from two wheels: an image and mask (stardist) and the
	# MNI ICBM152 template (nilearn); their own dependencies are not needed.
	$(DEMO_VENV)/bin/python -m pip install -q --no-deps stardist nilearn
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m examples.unet.train $(ARGS)

# 3D U-Net on the MNI ICBM152 template (in the nilearn wheel); ARGS="--processes 2" etc.
demo3d: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python -m examples.unet3d.train $(ARGS)

quickstart: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/quickstart.py

test: $(STAMP)
	$(BIN)/python -m ruff check jaxseg tests examples bench tools
	# Unit, property, doctests, README/docs code blocks, the docs build (tests/test_docs.py),
	# and tests/multiprocess (a 2-process JAX cluster on loopback, 4 CPU devices each).
	$(BIN)/python $(PYTEST) -n 2 --dist loadfile
	# Scale-out tests: a second process with 8 host devices (XLA reads the flag at start).
	$(MULTIDEVICE) $(BIN)/python $(PYTEST) -n 2 tests/multidevice

# The declared floors (pyproject.toml, read by tools/floors.py) on Python 3.11: the tests
# that need no oracle (torch, MONAI, optax, flax are not installed; those tests skip).
MIN_VENV := .venv-min
$(MIN_VENV)/.installed: pyproject.toml Makefile tools/floors.py
	test -x $(MIN_VENV)/bin/python || $(PYTHON_MIN) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python tools/floors.py > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install -q -c $(MIN_VENV)/constraints.txt -e . $(TEST_TOOLS)
	touch $@

test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -E -i "^(jax|jaxlib|chex|numpy) "
	$(MIN_VENV)/bin/python $(PYTEST) -n 2 --dist loadfile tests
	$(MULTIDEVICE) $(MIN_VENV)/bin/python $(PYTEST) -n 2 tests/multidevice

# The newest releases (jax 0.12 needs Python >= 3.12), upgraded at every run.
NEWEST_VENV := .venv-newest
test-newest:
	@test -n "$(PYTHON_NEWEST)" || { echo "no python3.13 or python3.12 found: set PYTHON_NEWEST"; exit 1; }
	test -x $(NEWEST_VENV)/bin/python || $(PYTHON_NEWEST) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade -e . $(TEST_TOOLS) jax jaxlib chex numpy
	$(NEWEST_VENV)/bin/python --version
	$(NEWEST_VENV)/bin/python -m pip list 2>/dev/null | grep -E -i "^(jax|jaxlib|chex|numpy) "
	$(NEWEST_VENV)/bin/python $(PYTEST) -n 2 --dist loadfile tests
	$(MULTIDEVICE) $(NEWEST_VENV)/bin/python $(PYTEST) -n 2 tests/multidevice

# The documentation site (MkDocs, docstrings through mkdocstrings), offline; warnings fail.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/python -m mkdocs serve

lint: $(STAMP)
	$(BIN)/python -m ruff check jaxseg tests examples bench tools
	$(BIN)/python -m ruff format --check jaxseg tests examples bench tools

format: $(STAMP)
	$(BIN)/python -m ruff format jaxseg tests examples bench tools
	$(BIN)/python -m ruff check --fix jaxseg tests examples bench tools

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-sweep: $(STAMP)
	$(BIN)/python -m bench.run --sweep

clean:
	rm -rf $(VENV) $(DEMO_VENV) $(MIN_VENV) $(NEWEST_VENV) site outputs .pytest_cache .hypothesis
