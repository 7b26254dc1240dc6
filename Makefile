# loader-ws-trades: every target installs what it needs; see the README.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9

.PHONY: help venv tools monitoring image image-test lint unit coverage simulate integration test demo bench kafka-up kafka-down sim-build clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml dev/pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements/dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e . -e dev
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the locked dependencies and the project

# The repeated-code check (six lines or more, .jscpd.json), pinned by its npm lock file.
JSCPD := dev/jscpd/node_modules/.bin/jscpd
$(JSCPD): dev/jscpd/package.json dev/jscpd/package-lock.json
	npm ci --prefix dev/jscpd --silent --no-audit --no-fund
	touch $(JSCPD)

kafka-up: ## start the local Kafka broker (PLAINTEXT and SASL_SSL+SCRAM) in the background
	bash testbed/kafka/kafka.sh up

kafka-down: ## stop the local Kafka broker
	bash testbed/kafka/kafka.sh down

tools: ## install the Debian tools the tests run for real (prometheus, promtool, kcat)
	bash testbed/tools.sh

sim-build: ## build the Binance-compatible exchange simulator
	bash testbed/simulator/build.sh

SEEDS ?= 2000
START ?= 0

simulate: venv ## seeded whole-run simulations: SEEDS=n schedules from START, or SEED=s to replay one
	cd tests && ../$(BIN)/python -m simulation $(if $(SEED),--seed $(SEED) --logs,--seeds $(SEEDS) --start $(START))

monitoring: venv ## regenerate the PrometheusRule and the Grafana dashboard (monitoring/, k8s/monitoring/)
	$(BIN)/python -m devtools.monitoring

lint: venv tools $(JSCPD) ## ruff, formatting, mypy (strict), repeated code (jscpd), the import-layer contract
	$(BIN)/ruff check src tests dev testbed bench
	$(BIN)/ruff format --check src tests dev testbed bench
	$(BIN)/mypy src tests dev testbed bench
	$(JSCPD) src tests dev bench testbed
	$(BIN)/lint-imports --no-cache
	bash testbed/deploy_check.sh

unit: venv ## unit and property tests, and the simulation of whole runs (no network)
	$(BIN)/pytest tests/unit tests/simulation

coverage: venv ## unit tests with branch coverage of src/
	$(BIN)/coverage run -m pytest tests/unit -q
	$(BIN)/coverage report

integration: venv tools kafka-up sim-build ## tests against the real broker, the simulator and the service process
	$(BIN)/pytest tests/integration -m "not image"

image: ## build the image from the Dockerfile with buildah (its base made locally when missing)
	bash testbed/image/build.sh

image-test: venv image kafka-up sim-build ## run the image as the Job does: both listeners, probes, SIGTERM, bad config
	$(BIN)/pytest tests/integration/test_image.py
	@cat .local/image-test.json

test: venv tools lint kafka-up sim-build image ## everything CI runs: lint, the simulator's tests, unit, integration, image
	cd testbed/simulator && go vet ./... && go test ./...
	$(BIN)/pytest tests

demo: venv kafka-up sim-build ## run the loader on the local broker and simulator and show what happens
	$(BIN)/python testbed/demo.py

bench: venv kafka-up sim-build ## end-to-end throughput, latency and hot-path benchmarks
	$(BIN)/python -m bench.run

clean: ## stop the broker and remove the venv and local state
	-bash testbed/kafka/kafka.sh down
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
