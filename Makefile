# One-command set-up: `make demo` runs the demo, `make test` runs the tests (all of them, as CI
# does), `make test-fast` the fast tier, `make docs` builds and checks the documentation.
# Each target creates the virtual environment it needs. torch==2.13.0 is installed first
# and every later install is held by constraints.txt, so no CUDA build of torch is pulled.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.histoexpr-installed
# the index torch is installed from; empty: pip's own. On Linux, PyPI's torch is the CUDA build:
# `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU-only one
TORCH_INDEX ?=
# hx.datasets (the tutorials, the tests) read the public data sets from ../shared/data where it
# exists; elsewhere they download them once into ~/.cache/histoexpr/data
SHARED_DATA := $(abspath ../shared/data)
export HISTOEXPR_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA))
# napari's tests need a display: use a virtual one where xvfb-run exists
XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo xvfb-run -a)

.PHONY: demo test test-fast wheel-smoke docs docs-fast benchmarks clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -c constraints.txt -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/histoexpr demo --out histoexpr-demo --overwrite

# every test and every docstring example that runs (what CI runs), in two processes; the 15
# slowest are printed at the end
test: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

# the inner loop, under 3 minutes on 2 cores: all but the tests measured slow (tests/_slow.py)
# and those reading the real data sets
test-fast: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not realdata" --durations=15

# the pip route: build the wheel, install it into a fresh virtual environment, smoke-test it
wheel-smoke:
	PYTHON=$(PYTHON) .ci/wheel_smoke.sh

# the documentation, every tutorial executed (outputs cached in docs/_build/.jupyter_cache, so a
# rebuild re-runs only the notebooks that changed), then read as a user reads it
# (tests/check_docs.py: API pages, links, example figures, every tutorial's figures). No
# MPLBACKEND: the notebooks' kernel must use its inline backend to record the figures.
docs: $(STAMP)
	rm -rf docs/generated
	env -u MPLBACKEND PYDEVD_DISABLE_FILE_VALIDATION=1 \
		$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html
	$(BIN)/python tests/check_docs.py docs/_build/html --executed

# the API pages without executing the tutorials (their figures are left out), checked the same way
docs-fast: $(STAMP)
	rm -rf docs/generated
	$(BIN)/sphinx-build -W --keep-going -b html -D nb_execution_mode=off docs docs/_build/html-fast
	$(BIN)/python tests/check_docs.py docs/_build/html-fast

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/bench_wsi_memory.py

clean:
	rm -rf $(VENV) docs/_build histoexpr-demo
