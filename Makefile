# bayesgen: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# Both create .venv from nothing with Python >= 3.12 (found on PATH or under pyenv).

VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= $(shell for p in python3.13 python3.12 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3 2>/dev/null) python3; do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v $$p; break; }; \
          done)

.PHONY: install demo lint test test-slow test-all docs clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "bayesgen needs Python >= 3.12 (ArviZ 1.x requires it); none found" >&2; exit 1; }
	@echo "using $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/bayesgen tour --out runs/tour --overwrite

# Test workers (pytest-xdist): one per core by default; TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= auto

# ruff (lint + format check, configured in pyproject.toml) first: a style error fails before the slow tests.
LINT_PATHS := bayesgen tests tutorials benchmarks docs/conf.py

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m slow

test-all: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

# The documentation site (docs/_build/html): the tutorials executed into the gallery.
# DOCS_SMOKE=1 executes them in their fast smoke mode. Sphinx warnings are errors.
$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $@

docs: $(BIN)/.docs-installed
	cd docs && ../$(BIN)/python -m sphinx -b html -W --keep-going . _build/html

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build docs/gallery docs/jupyter_execute
