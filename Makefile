# Two commands on a fresh machine (see README): `make run` and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS ?= never
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
# uv on PATH, `python3 -m uv`, or installed into .tools/ on first use (scripts/uv; PEP 668 safe).
UV := scripts/uv
PYTEST_ARGS ?=

.PHONY: setup services test-services run test test-fast test-cluster lint bench bench-quick bench-table bench-soak bench-slow-link bench-profile bench-replicas bench-growth reliability
setup:
	$(UV) sync --frozen --all-extras

services:
	scripts/ensure-services

# The local services, or else testcontainers where a Docker engine answers (tests/support/services.py).
test-services: setup
	scripts/ensure-services --or-docker

# Set up, bring the schema up to date, and consume commands until Ctrl-C.
run: setup services
	$(UV) run coupon-worker run --migrate

# Set up and run every test (unit, integration, end to end, faults) against the local services.
test: setup test-services
	$(UV) run pytest $(PYTEST_ARGS)

# Everything but the fault suite.
test-fast: setup test-services
	$(UV) run pytest -m "not faults" $(PYTEST_ARGS)

# The cluster fault tests alone: three extra RabbitMQ nodes and a PostgreSQL standby on loopback
# (scripts/rabbit-cluster, scripts/pg-standby), brought up and torn down by the tests; ~6 min.
# `make test` runs them too; run as root (the nodes run as the rabbitmq and postgres users).
test-cluster: setup test-services
	$(UV) run pytest -m cluster $(PYTEST_ARGS)

# The fault suite (the cluster tests included), its figures kept in tests/results/reliability.json
# beside pytest's own record of the run (reliability.junit.xml, the FIGURES lines in it), and the
# Reliability and Past-one-machine tables of docs/reliability.md rendered from them, failed tests
# or not (the exit status is the suite's). A disruptive test waits for the machine's service
# lock; that wait does not count against its timeout (timeout_func_only in pyproject.toml).
reliability: setup test-services
	RELIABILITY_RESULTS=tests/results/reliability.json $(UV) run pytest -m faults \
		--junitxml=tests/results/reliability.junit.xml $(PYTEST_ARGS); status=$$?; \
	$(UV) run python -m tests.support.reliability_table --write docs/reliability.md && exit $$status

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

# The worker against a broker-only ceiling (docs/performance.md): BENCH_ARGS="--commands 5000",
# worker knobs as flags or WORKER_* variables; results and their raw record in
# benchmarks/results/, then the tables of docs/performance.md rendered from the new result.
BENCH_ARGS ?=
bench: setup services
	$(UV) run python -m benchmarks $(BENCH_ARGS)
	$(UV) run python -m benchmarks.table benchmarks/results/latest.json --write docs/performance.md

# The same, end to end with small counts (a smoke test, not figures).
bench-quick: setup services
	$(UV) run python -m benchmarks --quick $(BENCH_ARGS)

# A million commands through one worker, its RSS every 100,000 (SOAK_ARGS="--commands 200000");
# run once per change of the hot path, stored as benchmarks/results/soak-<time>.json, not in CI.
SOAK_ARGS ?=
bench-soak: setup services
	$(UV) run python -m benchmarks.soak $(SOAK_ARGS)
	$(UV) run python -m benchmarks.phase_tables --only soak --write docs/performance.md

# Lone commands over a 10 ms round trip to PostgreSQL (a delaying proxy on loopback), p50/p99;
# SLOW_LINK_ARGS="--delay 5 --rate 20 --seconds 30"; benchmarks/results/slow-link-<time>.json.
SLOW_LINK_ARGS ?=
bench-slow-link: setup services
	$(UV) run python -m benchmarks.slow_link $(SLOW_LINK_ARGS)
	$(UV) run python -m benchmarks.phase_tables --only slow-link --write docs/performance.md

# Where a workload's time goes: one preloaded worker run (the 1,000-coupon redeem by default)
# under py-spy, with the database's statements from pg_stat_statements where the server preloads
# it; written to docs/profiles/<workload>-<time>.txt. PROFILE_ARGS="--workload mixed --commands 40000"
PROFILE_ARGS ?=
bench-profile: setup services
	$(UV) run python -m benchmarks.profile $(PROFILE_ARGS)

# Two worker processes on one queue against one (docs/performance.md, "Replicas"): the bench
# workloads interleaved 1, 2, 1, 2, ..., lock waits and deadlocks read from PostgreSQL, a hot
# coupon shared by both; REPLICAS_ARGS="--quick"; stored as benchmarks/results/replicas-<time>.json,
# then its section of docs/performance.md rendered from it.
REPLICAS_ARGS ?=
bench-replicas: setup services
	$(UV) run python -m benchmarks.replicas $(REPLICAS_ARGS)
	$(UV) run python -m benchmarks.replicas_table --write docs/performance.md

# create, redeem and mixed over empty tables and over 10,000,000 processed commands and 1,000,000
# coupons made in SQL, interleaved, then `coupon-worker prune` timed (GROWTH_ARGS="--processed
# 1000000 --coupons 100000"); benchmarks/results/growth-<time>.json, then its section of
# docs/performance.md. 10-15 minutes and 4 GB of disk at full size; not in CI.
GROWTH_ARGS ?=
bench-growth: setup services
	$(UV) run python -m benchmarks.growth $(GROWTH_ARGS)
	$(UV) run python -m benchmarks.growth_table --write docs/performance.md

# The Performance tables (docs/performance.md) from a result file (BENCH_RESULT, default latest.json;
# BENCH_BEFORE, a result file of the previous worker, adds its column).
BENCH_RESULT ?= benchmarks/results/latest.json
BENCH_BEFORE ?=
bench-table: setup
	$(UV) run python -m benchmarks.table $(BENCH_RESULT) $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE))
