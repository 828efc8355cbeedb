# One command each: `make test` sets up a fresh machine (Debian packages + .venv) and runs the whole suite;
# `make demo` will run the two-HISP demo once the milter lands. Everything runs on loopback only.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint typecheck check

setup:
	bash scripts/bootstrap

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

.PHONY: demo
demo: setup
	$(PY) scripts/demo.py
