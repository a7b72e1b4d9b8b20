# The README's two commands: `make demo` (the whole chain on the embedded sample) and `make test`.
# Both create .venv and install the project into it first; nothing needs to be installed beforehand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`; whole test files go to one worker (--dist loadfile), so
# module fixtures are built once. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,seedref]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out runs/demo

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff (lint and import order) and mypy over both packages; part of `make test`, so CI enforces them.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs *.egg-info
