# The lottery central: run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the test dependencies (pytest, hypothesis)

.PHONY: test
test: $(VENV)/.installed ## run the whole test suite (CI profile of the slow tests)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

.PHONY: clean
clean: ## remove the virtual environment, generated data, databases and caches
	rm -rf $(VENV) .data data .pytest_cache .hypothesis bench/results *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
