# The workbook's tasks. `make workbook` runs every notebook on the embedded study area; `make test` runs the tests.
# Both create (or reuse) a virtual environment in $(VENV) and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/default
PROFILE ?= quick
# Test processes: notebooks run in their own kernels, so a second worker overlaps their start-up and training
# (the suite took 7 min 40 s with two workers on a 2-core machine). Tests go out one at a time, the longest first
# (tests/conftest.py), so the two workers share the long notebook runs.
TEST_WORKERS ?= 2

.PHONY: install workbook test check clean bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

workbook: install
	$(PY) -m lithocore.workbook --run-dir $(RUN_DIR) --profile $(PROFILE)

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --maxschedchunk=1

check: install
	$(PY) -m pytest -x -q tests/test_project.py

clean:
	rm -rf runs data/generated .pytest_cache

bench: install
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_mapping.py
	$(PY) benchmarks/bench_fuse_scale.py --sizes 2000 5000
