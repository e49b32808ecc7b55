# The two commands of the README:  make demo   and   make test
# Both build .venv with the exact versions of requirements.lock (torch 2.13.0, CPU build).
PYTHON ?= python3
VENV   := .venv
# This project's machines keep the CPU build of torch in /opt/wheels; elsewhere pip uses PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PY     := $(VENV)/bin/python

.PHONY: demo test bench clean-venv

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/genlab demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/throughput.py

clean-venv:
	rm -rf $(VENV)
