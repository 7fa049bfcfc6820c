# Two entry points: `make run` (the main job on the embedded model) and `make test`;
# `make test-tpu` adds the TPU ahead-of-time compiles (libtpu, in its own virtualenv).
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

# Data is read from here (the real files beside the project); override for your own copy.
# Without one (a fresh clone) it stays empty and the jobs download the pinned files.
ALIGNMENT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export ALIGNMENT_DATA_DIR

.PHONY: setup setup-test setup-tpu run test test-tpu

# libtpu lives in a second virtualenv: with it installed, every `import jax` probes for a TPU.
# jax[tpu] is pinned to the everyday venv's jax, so both compile with the same jax and XLA.
TPU_VENV ?= .venv-tpu
TPU_PY := $(TPU_VENV)/bin/python

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade uv

# Runtime install: the library and its stack only.
$(VENV)/.installed: setup.py | $(PY)
	$(UV) pip install -q --python $(PY) -e .
	touch $@

# Test install adds the reference implementations. torch comes from pip so that the CPU build
# on this machine is used; an unpinned torch from uv would pull a multi-GB CUDA build.
$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(UV) pip install -q --python $(PY) -e '.[test]'
	touch $(VENV)/.installed $@

$(TPU_VENV)/.installed: setup.py | $(VENV)/.installed
	python3 -m venv $(TPU_VENV)
	$(UV) pip install -q --python $(TPU_PY) -e . \
	  "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')" "pytest>=8"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test
setup-tpu: $(TPU_VENV)/.installed

run: setup
	$(PY) -m alignment.main --config=configs/demo.py

test: setup-test
	$(PY) -m pytest -q --durations=15 tests

# The TPU AOT table (docs/MULTIHOST.md) is left in build/tpu_aot.md. Compiling needs no TPU, so
# libtpu's single-process lock (/tmp/libtpu_lockfile, held by any other libtpu process) is waived.
test-tpu: setup-tpu
	JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 $(TPU_PY) -m pytest -q --durations=15 tests/test_tpu_aot.py \
	  tests/test_sharding.py -k "aot or tpu"
