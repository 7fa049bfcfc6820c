# Two entry points: `make run` (the main job on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

# Data is read from here (the real files beside the project); override for your own copy.
# Without one (a fresh clone) it stays empty and the jobs download the pinned files.
ALIGNMENT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export ALIGNMENT_DATA_DIR

.PHONY: setup setup-test run test

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

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

run: setup
	$(PY) -m alignment.main --config=configs/demo.py

test: setup-test
	$(PY) -m pytest -q --durations=15 tests
