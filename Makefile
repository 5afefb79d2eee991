# Quick start: `make demo` (set up + run the demo), `make test` (set up + run the tests); `make docs` builds the site.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.detkd-installed

.PHONY: setup demo test lint docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/detkd demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check detkd tests tools
	$(BIN)/ruff format --check detkd tests tools
	$(BIN)/mypy detkd
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning (a broken link, a bad docstring).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs demo_out site .pytest_cache
