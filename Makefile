# One command each: `make demo` runs the two-HISP demo; `make check` sets up a fresh machine (Debian packages,
# .venv) and runs lint, typecheck and the whole suite (`make test`: the suite alone). Everything runs on loopback.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-shuffled lint typecheck check mutation mutation-changed

setup:
	bash scripts/bootstrap

test: setup
	$(PY) -m pytest -q

# The suite in a random order (pytest-randomly; the seed it prints, given as --randomly-seed=N, repeats one):
# no test may rely on another's leftovers.
test-shuffled: setup
	$(PY) -m pytest -p randomly

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

# Mutation testing (scripts/mutation.py, cosmic-ray): every listed module (hours), or one: make mutation M=...
mutation: setup
	$(PY) scripts/mutation.py $(M)

# Only the mutants on lines the last commit changed, within about three minutes (CI runs this after the suite).
mutation-changed: setup
	$(PY) scripts/mutation.py --since HEAD~1 --limit 20 --budget 180

.PHONY: demo
demo: setup
	$(PY) scripts/demo.py
