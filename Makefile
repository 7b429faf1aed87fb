# `make test`, `make demo` and `make notebooks` work on a fresh machine: the
# first run creates .venv and installs the package with the extras that
# target needs (`test`; `tensorflow,demo`; `tensorflow,notebooks`); later
# runs reuse it and reinstall only when pyproject.toml changes.
PYTHON ?= python3
comma := ,
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo
NOTEBOOKS_STAMP := $(VENV)/.installed-notebooks

.PHONY: test test-bench test-backends test-hub test-oldest dist demo notebooks bench clean

# $(call install,EXTRAS): .venv with the package and EXTRAS installed.
define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(1)]"
	touch $@
endef

$(STAMP): pyproject.toml
	$(call install,test)

$(DEMO_STAMP): pyproject.toml
	$(call install,tensorflow$(comma)demo)

$(NOTEBOOKS_STAMP): pyproject.toml
	$(call install,tensorflow$(comma)notebooks)

# PYTEST_ARGS adds pytest options, e.g. PYTEST_ARGS="-n 2" (pytest-xdist,
# in the test extra) to run the tests in two processes.
test: $(STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) -m pytest -q -m "not bench" $(PYTEST_ARGS)

# The same suite on Keras's JAX and PyTorch backends (CPU builds). TORCH is
# the PyTorch requirement: the CPU-only wheel, so no CUDA libraries come
# along on a CPU machine (override it where another build is wanted).
# pytorch-crf (no dependencies of its own) is the peer the CRF is tested and
# benchmarked against on torch.
TORCH ?= torch==2.13.0+cpu
BACKENDS_STAMP := $(VENV)/.installed-backends

$(BACKENDS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,jax]" "$(TORCH)" pytorch-crf==0.7.2
	touch $@

test-backends: $(BACKENDS_STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -m "not bench" $(PYTEST_ARGS)
	KERAS_BACKEND=torch $(PY) -m pytest -q -m "not bench" $(PYTEST_ARGS)

# The benchmark suite end to end at tiny sizes (its table shapes, not speed).
test-bench: $(BACKENDS_STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -m bench tests/test_benchmarks.py

# QKVAttention inside KerasHub (tests/test_keras_hub.py and tutorial 12;
# skipped where KerasHub is absent). KerasHub requires TensorFlow Text, which requires its
# own TensorFlow build: installed without dependencies, with the two it
# imports that .venv lacks, so that .venv keeps one TensorFlow.
HUB_STAMP := $(VENV)/.installed-hub

$(HUB_STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet --no-deps keras-hub==0.32.0 regex==2026.12.2 tokenizers==0.23.3
	touch $@

test-hub: $(STAMP) $(HUB_STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) -m pytest -q $(PYTEST_ARGS) \
		tests/test_keras_hub.py "tests/test_examples.py::test_tutorial_quick_run[12_long_context_gpt2]"

# Every tutorial in full mode; figures go to examples/output/.
demo: $(HUB_STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) examples/run_all.py

# The tutorials as .ipynb notebooks in examples/notebooks/.
notebooks: $(NOTEBOOKS_STAMP)
	$(PY) examples/to_notebooks.py

# The CPU ratio suite (TensorFlow, and JAX and torch beside it); rewrites
# benchmarks/results/ and docs/benchmarks.md.
bench: $(BACKENDS_STAMP)
	$(PY) -m benchmarks --update-docs

# The suite on the oldest supported combination: Python 3.10 (the newest
# Keras it gets is 3.12), Keras 3.10 and TensorFlow 2.19, in .venv-oldest.
PYTHON_OLDEST ?= $(shell python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep '^3\.10\.' | tail -1) \
	pyenv which python3.10 2>/dev/null)
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed-test

$(OLDEST_STAMP): pyproject.toml .ci/oldest-constraints.txt
	test -n "$(PYTHON_OLDEST)" || { echo "make test-oldest needs Python 3.10 (PYTHON_OLDEST=...)"; exit 1; }
	test -x $(OLDEST)/bin/python || $(PYTHON_OLDEST) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e ".[test]" -c .ci/oldest-constraints.txt
	touch $@

test-oldest: $(OLDEST_STAMP)
	KERAS_BACKEND=tensorflow $(OLDEST)/bin/python -m pytest -q -m "not bench" $(PYTEST_ARGS)

# The sdist and wheel in dist/, checked as a package index would.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m pip install --quiet build twine
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf $(VENV) $(OLDEST) build dist site *.egg-info

# The documentation site in site/ (open site/index.html): built offline,
# every warning an error. Its tools are the [docs] extra.
DOCS_STAMP := $(VENV)/.installed-docs
.PHONY: docs docs-tutorials docs-screenshots

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The tutorial pages (docs/tutorials/) from the scripts and the printouts
# that `make demo` leaves in examples/output/.
docs-tutorials: $(STAMP)
	$(PY) docs/gen_tutorials.py

# Screenshots of three pages of the built site in headless Chromium
# (Debian: apt-get install chromium), to build/screenshots/.
docs-screenshots: docs
	$(PY) docs/screenshots.py
