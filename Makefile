# `make test` and `make demo` work on a fresh machine: the first run creates
# .venv and installs the package with its extras; later runs reuse it and
# reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: $(STAMP)
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PY) -m pytest -q

demo: $(STAMP)
	@echo "make demo: the tutorials (examples/NN_*.py) arrive with the tutorials issue;"
	@echo "it will run each one and write its figures to examples/output/."

clean:
	rm -rf $(VENV) build *.egg-info
