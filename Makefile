# chatproj: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Development and tests run with DEBUG on; production (docker compose) sets it off.
DEBUG ?= True
export DEBUG
# Written once when missing (DEBUG=True and a fresh SECRET_KEY), so manage.py works in
# a fresh checkout; git-ignored, never committed.
DOTENV := .env

.PHONY: run test test-fast lint venv clean chromium reliability bench screenshots \
	kafka-fetch kafka test-kafka

venv: $(STAMP)

$(DOTENV): | $(STAMP)
	$(PY) -m chatproj.devenv $(DOTENV)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP) $(DOTENV)
	$(PY) manage.py runstack

# Runs every test against real servers the fixtures start on free ports.
# PYTEST_ARGS="-k e2e" narrows it; DATABASE_URL=postgres://... runs it on Postgres.
test: $(STAMP) $(DOTENV) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The server-free tier: every test not marked `servers` (tests/conftest.py marks those
# whose fixtures start Redis, Kafka, a worker or the web server). Starts no server; ~1.5 min.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not servers" $(PYTEST_ARGS)

# The page tests drive Debian's Chromium; install it when we can (root), else they skip
# (and fail under CI=true, so CI never passes without them).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "Chromium not installed: browser tests will be skipped (apt-get install chromium)"; }

# Rewrites README's pictures (docs/screenshots/) from the browser tests.
screenshots: $(STAMP) $(DOTENV) chromium
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/e2e/test_ui.py tests/e2e/test_ui_page.py \
	  tests/e2e/test_ui_rooms.py

# Re-measures the fault-injection scenarios (embedded Tansu, and a real three-node
# Apache Kafka) and rewrites docs/RELIABILITY.md.
reliability: $(STAMP) $(DOTENV)
	$(PY) -m chatproj.kafka_cluster fetch
	CHAT_TEST_KAFKA=1 $(PY) -m pytest tests/e2e/test_reliability.py tests/e2e/test_kafka_faults.py \
	  --reliability-report docs/RELIABILITY.md

# Throughput benchmark (docs/PERFORMANCE.md): starts its own stack on free ports and
# writes bench/results/. BENCH_ARGS="--search --database-url postgres" for Postgres;
# `.venv/bin/python -m bench --help` lists the options.
BENCH_ARGS ?= --search
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Real Apache Kafka (KRaft) for the `kafka` tests and benchmarks: chatproj.kafka_cluster
# runs the jars deploy/kafka/pom.xml pins, fetched with Maven (needs java and mvn)
# into the git-ignored .cache/kafka/<version>/libs once.
kafka-fetch: $(STAMP)
	$(PY) -m chatproj.kafka_cluster fetch

# A real cluster in the foreground until Ctrl-C (`make kafka NODES=3`); prints its
# bootstrap servers. Its data is temporary.
NODES ?= 1
kafka: $(STAMP)
	$(PY) -m chatproj.kafka_cluster run --nodes $(NODES)

# The real-Apache-Kafka tier (in .ci/run): the integration tests against one real
# node (CHAT_TEST_BROKER=kafka), then the fault tests on three nodes (RF 3, min ISR 2).
KAFKA_INTEGRATION_TESTS := tests/integration/test_tasks.py \
	tests/integration/test_agents.py tests/integration/test_notification_agent.py \
	tests/integration/test_kafka_topics.py tests/integration/test_dead_letter_kafka.py \
	tests/integration/test_transactions_kafka.py tests/integration/test_readme_tail.py \
	tests/e2e/test_e2e.py \
	tests/deploy/test_kafka_cluster.py tests/deploy/test_bench_kafka.py
test-kafka: $(STAMP) $(DOTENV)
	$(PY) -m chatproj.kafka_cluster fetch
	CHAT_TEST_KAFKA=1 CHAT_TEST_BROKER=kafka $(PY) -m pytest $(KAFKA_INTEGRATION_TESTS) $(PYTEST_ARGS)
	CHAT_TEST_KAFKA=1 $(PY) -m pytest tests/e2e/test_kafka_faults.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check chat chatproj tests bench
	$(VENV)/bin/ruff format --check chat chatproj tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) db.sqlite3 test_db.sqlite3*
