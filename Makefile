# edgefleet — `make demo` runs the loop, `make test` runs the tests; both install what they need.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup check test test-fast cluster-test browser airflow-test container-test demo bench images clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/build_broker_journal.sh native/broker_journal/edgefleet_journal.c
	bash scripts/setup.sh $(VENV)
	touch $@

# Lint, format, types, and the layer contract (pyproject.toml [tool.importlinter]): contracts at the
# bottom import nothing of ours, process packages never import each other, edge images reach no Spark.
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict edgefleet
	$(BIN)/lint-imports

# The full suite: real Mosquitto brokers, Spark, MLflow, the SDK against the stand-in, Chromium.
# The cluster tests start their own Spark master, worker, Connect server and mlflow server (~5 min):
# `make cluster-test` runs them; .ci/run runs both.
test: setup browser
	$(BIN)/pytest -m "not cluster"

cluster-test: setup
	$(BIN)/pytest -m cluster

# The fast tier: pure logic with in-memory fakes, under a minute.
test-fast: setup
	$(BIN)/pytest -m fast -q

# Headless Chromium (Debian's package) for the dashboard's browser test; installed when root.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" -ne 0 ] || { echo "installing chromium with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The retraining DAG (deployment/airflow/) under Airflow itself, in a venv of its own (.venv-airflow,
# deployment/airflow/requirements.txt): DagBag import checks, then `airflow dags test` end to end
# with this venv's edgefleet CLI. .ci/run runs it after `make test`.
airflow-test: setup
	bash scripts/airflow_dag_test.sh

demo: setup
	$(BIN)/edgefleet demo

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"  # the real fleet of benchmarks/model_quality.py
	$(BIN)/python benchmarks/model_quality.py --quick
	$(BIN)/python benchmarks/train_throughput.py --quick
	$(BIN)/python benchmarks/edge_throughput.py --quick
	$(BIN)/python benchmarks/dashboard_cpu.py --quick
	$(BIN)/python benchmarks/drift_long_run.py --quick

# Container images without a registry: a debootstrapped base, a wheelhouse, offline builds.
# The first run needs root (debootstrap); BUNDLE is the bundle the inference image bakes in.
# build_images.sh runs scripts/images/ with python3 (stdlib only; catalog.py is the table of images).
BUNDLE ?= out/demo/bundle
images: setup
	bash scripts/build_images.sh --bundle $(BUNDLE)

# The container end to end (tests/containers): train a bundle, build every image, docker-compose
# up with the simulator. Prints SKIPPED without a Docker engine, or fails when CI=true (CI must run
# it). .ci/run runs it after `make test`.
container-test: setup
	bash scripts/container_e2e.sh

clean:
	rm -rf out mlflow.db mlruns mlartifacts .pytest_cache .mypy_cache .ruff_cache .venv-airflow
