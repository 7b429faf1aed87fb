# `make test`, `make demo` and `make notebooks` work on a fresh machine: the
# first run creates .venv and installs the package with its extras; later
# runs reuse it and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test test-backends demo notebooks bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: $(STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) -m pytest -q

# The same suite on Keras's JAX and PyTorch backends (CPU builds). TORCH is
# the PyTorch requirement: the CPU-only wheel, so no CUDA libraries come
# along on a CPU machine (override it where another build is wanted).
TORCH ?= torch==2.13.0+cpu
BACKENDS_STAMP := $(VENV)/.installed-backends

$(BACKENDS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,jax]" "$(TORCH)"
	touch $@

test-backends: $(BACKENDS_STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q
	KERAS_BACKEND=torch $(PY) -m pytest -q

# Every tutorial in full mode; figures go to examples/output/.
demo: $(STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) examples/run_all.py

# The tutorials as .ipynb notebooks in examples/notebooks/.
notebooks: $(STAMP)
	$(PY) examples/to_notebooks.py

# The CPU ratio suite; rewrites benchmarks/results/ and docs/benchmarks.md.
bench: $(STAMP)
	$(PY) -m benchmarks --update-docs

clean:
	rm -rf $(VENV) build *.egg-info
