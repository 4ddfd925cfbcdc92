# The lottery central: run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
PYTEST_ARGS ?=
AGENCIES ?= 5
BETS ?= 78697
DATA ?= .data
COMPOSE ?= docker compose
COMPOSE_FILE ?= docker-compose.yml
# The agency files COMPOSE_FILE mounts (./.data/agency-N.csv, relative to the file):
# they, not AGENCIES, say how many agencies a deployment has.
COMPOSE_DIR = $(patsubst %/,%,$(dir $(COMPOSE_FILE)))
COMPOSE_DATA = $(sort $(shell grep -o '\./\.data/agency-[0-9]*\.csv' $(COMPOSE_FILE) 2>/dev/null))

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

.PHONY: demo
demo: ## run the whole lottery locally without Docker: the central and 5 agencies on generated data
	$(PYTHON) scripts/demo.py --agencies $(AGENCIES) --bets $(BETS)

.PHONY: screenshot
screenshot: ## photograph the status page of a real run (central + 5 agencies) into docs/ (needs chromium)
	$(PYTHON) scripts/screenshot.py --data $(DATA)

.PHONY: test
test: $(VENV)/.installed ## run the whole test suite (short profile of the slow tests; Docker tests excluded)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-long
test-long: $(VENV)/.installed ## the long profile: more kills, more examples, bigger abuse
	LOTTERY_TEST_PROFILE=long HYPOTHESIS_PROFILE=long $(VENV_PY) -m pytest -m "not docker" $(PYTEST_ARGS)

.PHONY: test-docker
test-docker: $(VENV)/.installed data ## the Docker Compose scenario (needs a Docker engine)
	$(VENV_PY) -m pytest -m docker $(PYTEST_ARGS)

.PHONY: data
data: ## generate .data/agency-1.csv .. agency-N.csv (AGENCIES=5, BETS=78697, DATA=.data)
	$(PYTHON) -m datagen --out $(DATA) --agencies $(AGENCIES) --bets $(BETS)

.PHONY: compose-data
compose-data: ## generate the agency files COMPOSE_FILE mounts, for as many agencies as it runs, unless all exist
	@[ -n "$(COMPOSE_DATA)" ] || { echo "$(COMPOSE_FILE) mounts no ./.data/agency-N.csv (see ./generate-compose.sh)" >&2; exit 2; }
	@for f in $(COMPOSE_DATA); do \
	    path="$(COMPOSE_DIR)/$${f#./}"; \
	    if [ -d "$$path" ]; then \
	        echo "$$path is a directory (Docker makes one for a file that is missing): removing it"; \
	        rmdir "$$path" || exit 2; \
	    fi; \
	done
	@for f in $(COMPOSE_DATA); do \
	    if [ ! -f "$(COMPOSE_DIR)/$${f#./}" ]; then \
	        $(MAKE) --no-print-directory data AGENCIES=$(words $(COMPOSE_DATA)) DATA="$(COMPOSE_DIR)/.data" || exit $$?; \
	        break; \
	    fi; \
	done

.PHONY: bench
bench: $(VENV)/.installed ## run the benchmarks and print their tables (results also in bench/results/)
	$(VENV_PY) -m pip install --quiet -e '.[bench]'
	$(VENV_PY) -m bench

.PHONY: profile
profile: $(VENV)/.installed ## profile the central under py-spy during scenario 2 (results in bench/results/)
	$(VENV_PY) -m pip install --quiet -e '.[bench]'
	$(VENV_PY) -m bench.profile

.PHONY: docker-image
docker-image: ## build the server and client images
	docker build --target server -t lottery-central:latest .
	docker build --target client -t lottery-agency:latest .

.PHONY: docker-compose-up
docker-compose-up: docker-image compose-data ## start the central and the agencies COMPOSE_FILE runs (a fresh lottery)
	$(COMPOSE) -f $(COMPOSE_FILE) up -d

.PHONY: docker-compose-down
docker-compose-down: ## end the lottery: stop (1 s grace), remove the containers, the network and the database volume
	$(COMPOSE) -f $(COMPOSE_FILE) stop -t 1
	$(COMPOSE) -f $(COMPOSE_FILE) down --volumes --remove-orphans

.PHONY: docker-compose-logs
docker-compose-logs: ## follow the containers' logs
	$(COMPOSE) -f $(COMPOSE_FILE) logs -f

.PHONY: clean
clean: ## remove the virtual environments, generated data, databases, build output and caches
	rm -rf $(VENV) .venv-ci .data data .pytest_cache .hypothesis .ruff_cache bench/results build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
