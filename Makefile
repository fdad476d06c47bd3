# fastshower: set-up, main job and tests.
#
#   make demo   set up .venv and run the main job on the built-in defaults
#   make test   set up .venv, run ruff and mypy on src/ and the test suite (what CI runs)
#
# Variables:
#   PYTHON       interpreter used to create the virtual environment (default python3)
#   TORCH_SPEC   pip requirement for torch, installed first only when no torch is importable
#                (default torch==2.13.0, the CPU build; e.g. TORCH_SPEC="torch --index-url ..." for CUDA)
#   VENV         where the virtual environment lives (default .venv)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastshower-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# --system-site-packages: a torch already installed for $(PYTHON) is reused, never replaced.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,geant4]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/fastshower demo

# lint and type-check the library first (settings in pyproject.toml), then the tests
test: setup
	$(PY) -m ruff check src
	$(PY) -m mypy src/fastshower
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/simulate.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
