# Single entry points: `make demo` and `make test` install what is missing first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# A prebuilt mmcv 2.1.0 (torch 2.13.0, cp311) saves a 30-minute compile where it exists.
MMCV_WHEELS ?= ../shared/wheels
MMCV_FIND_LINKS := $(if $(wildcard $(MMCV_WHEELS)/mmcv-*.whl),--find-links $(MMCV_WHEELS))
STAMP := $(VENV)/.damex-installed
PYTEST_ARGS ?=

.PHONY: install demo test study clean-demo

install: $(STAMP)

# Order matters (see ../shared/ENVIRONMENT.md): torch before the mmcv build, setuptools<82
# because mmcv, mmengine's `mmdet::` bases and openmim import pkg_resources, and openmim
# without its dependency chain, which would downgrade setuptools.
$(STAMP): setup.py requirements/runtime.txt requirements/tests.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 "setuptools<82" wheel numpy ninja
	MMCV_WITH_OPS=1 FORCE_CUDA=0 $(PIP) install --no-build-isolation $(MMCV_FIND_LINKS) mmcv==2.1.0
	$(PIP) install -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install --no-deps openmim==0.3.9
	$(PIP) install click colorama model-index pandas requests rich tabulate
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import mmcv.ops, mmdet, damex_mmdet, mim"
	touch $(STAMP)

demo: install
	$(PY) tools/run_demo.py --work-dir work_dirs/demo

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

study: install
	$(PY) benchmarks/mixture_study.py
