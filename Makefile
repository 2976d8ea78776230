# Two commands do all set-up on a fresh machine: `make dev` and `make test`.
SHELL := /bin/bash
UV = $(shell ./scripts/ensure-uv.sh)
PYTEST_ARGS ?=
COV_ARGS = --cov=errand_schema --cov=errand_api --cov=errand_worker --cov=errand_notifier \
           --cov=errand --cov-report=term:skip-covered --cov-fail-under=70

.PHONY: help install dev test test-unit lint format services bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## Install uv (if missing) and every package into .venv
	$(UV) sync --locked

dev: install  ## Run everything in one process (SQLite, in-memory broker); prints URL and key
	$(UV) run errand dev

services:  ## Make sure RabbitMQ, PostgreSQL and Redis are reachable (start local ones)
	./scripts/ensure-services.sh

test: install services  ## Install, check services, run the whole test suite
	$(UV) run pytest $(if $(CI),$(COV_ARGS),) $(PYTEST_ARGS)

test-unit: install  ## Only the tests that need no services
	$(UV) run pytest tests/unit $(PYTEST_ARGS)

lint: install  ## ruff and mypy --strict
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy shared/errand_schema services/api/errand_api services/worker/errand_worker \
	  services/notifier/errand_notifier errand

format: install  ## Format the code
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

clean:  ## Remove the dev database and caches
	rm -rf .errand .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
