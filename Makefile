# Two commands do all set-up on a fresh machine: `make dev` and `make test`.
SHELL := /bin/bash
UV = $(shell ./scripts/ensure-uv.sh)
PYTEST_ARGS ?=
COV_ARGS = --cov=errand_schema --cov=errand_api --cov=errand_worker --cov=errand_notifier \
           --cov=errand --cov-report=term:skip-covered --cov-fail-under=70

# CI runs the test files on two pytest-xdist workers, each file whole on one worker (most
# of the suite waits on real service processes; each worker has its own run id, hence
# its own database, vhost and Redis prefix).
XDIST_ARGS = -n 2 --dist loadfile

.PHONY: help install dev test test-unit lint format services chromium bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (as on these machines)
# Python would compile every module from source in every process it starts, ~6 s of
# CPU per service start on 2 cores instead of ~2.7 (the suite starts dozens).
install:  ## Install uv (if missing) and every package into .venv
	$(UV) sync --locked --compile-bytecode
	$(UV) run --no-sync python -m compileall -q -j 0 shared services errand > /dev/null

dev: install  ## Run everything in one process (SQLite, in-memory broker); prints URL and key
	$(UV) run errand dev

services:  ## Make sure RabbitMQ, PostgreSQL and Redis are reachable (start local ones)
	./scripts/ensure-services.sh

chromium:  ## Install Debian's headless Chromium for the browser tests when it is missing
	./scripts/ensure-chromium.sh

test: install services chromium  ## Install, check services, run the whole test suite
	$(UV) run pytest $(if $(CI),$(COV_ARGS) $(XDIST_ARGS),) $(PYTEST_ARGS)

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

# Benchmarks (bench/README.md): each target makes its own database, vhost and Redis
# prefix, starts and stops its own processes, prints a table and writes bench/results/.
BENCH = $(UV) run --group bench python -m bench
BENCH_ARGS ?=
SOAK_MINUTES ?= 30
PROBE ?= base
.PHONY: bench-install bench-enqueue bench-drain bench-multistep bench-latency bench-notifier \
        bench-memory bench-recovery bench-probe soak

# Compiled like `make install`: the scenarios start dozens of service processes.
bench-install:
	$(UV) sync --locked --group bench --compile-bytecode
	$(UV) run --no-sync python -m compileall -q -j 0 shared services errand bench > /dev/null

bench: bench-install services  ## Every benchmark scenario (about 13 min on 2 cores)
	$(BENCH) all $(BENCH_ARGS)

bench-enqueue: bench-install services  ## POST /v1/jobs vs a naive FastAPI app
	$(BENCH) enqueue $(BENCH_ARGS)

bench-drain: bench-install services  ## 20,000 noop jobs, 2x8 workers, vs Dramatiq and Celery
	$(BENCH) drain $(BENCH_ARGS)

bench-multistep: bench-install services  ## 2,000 four-step jobs: rate and step-to-step gap
	$(BENCH) multistep $(BENCH_ARGS)

bench-latency: bench-install services  ## submit->started and event->client at 50 jobs/s
	$(BENCH) latency $(BENCH_ARGS)

bench-notifier: bench-install services  ## 1k/5k/10k Socket.IO clients; 2,000-admin fan-out
	$(BENCH) notifier $(BENCH_ARGS)

bench-memory: bench-install services  ## RSS of api, worker, notifier: idle and after load
	$(BENCH) memory $(BENCH_ARGS)

bench-recovery: bench-install services  ## kill -9 mid-step; broker cut through a TCP proxy
	$(BENCH) recovery $(BENCH_ARGS)

bench-probe: bench-install services  ## Drain probe, worker settings alternated: PROBE="base a:VAR=1"
	$(UV) run --group bench python -m bench.probe $(PROBE) $(BENCH_ARGS)

soak: bench-install services  ## Mixed jobs at 100/s for SOAK_MINUTES (30); not in `make bench`
	$(BENCH) soak --minutes $(SOAK_MINUTES) $(BENCH_ARGS)
