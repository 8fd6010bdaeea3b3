#!/usr/bin/env bash
# Airflow's own checks of the retraining DAG (deployment/airflow/), in a venv of its own: .venv-airflow,
# pinned by deployment/airflow/requirements.txt, so Airflow never enters the main environment. DagBag
# imports the DAG (no import errors, no cycles, the task chain), then `airflow dags test` runs it end to
# end (AIRFLOW_HOME and its sqlite DB in a temp dir) with the main venv's edgefleet CLI against a tiny
# world: a registered champion bundle and a lake with one drifted device.
#   EDGEFLEET_PYTHON  the main venv's python (default .venv/bin/python): builds the world
#   EDGEFLEET_CLI     the edgefleet command the DAG runs (default $PWD/.venv/bin/edgefleet)
#   AIRFLOW_WHEELHOUSE  where the pinned wheels are kept between runs (default .cache/airflow-wheels)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${AIRFLOW_VENV:-.venv-airflow}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=deployment/airflow/requirements.txt
STAMP=$VENV/.installed
WHEELHOUSE=${AIRFLOW_WHEELHOUSE:-.cache/airflow-wheels}
started=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
install() { "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELHOUSE" -r "$REQUIREMENTS"; }
if [ ! -f "$STAMP" ] || [ "$REQUIREMENTS" -nt "$STAMP" ]; then
  # From the wheelhouse alone when it holds every pin; else fetch the missing wheels into it first.
  if ! install 2>/dev/null; then
    echo "airflow-test: fetching wheels into $WHEELHOUSE"
    "$VENV/bin/python" -m pip wheel -q -w "$WHEELHOUSE" -r "$REQUIREMENTS"
    install
  fi
  touch "$STAMP"
fi
installed=$(date +%s)
echo "airflow-test: $("$VENV/bin/airflow" version 2>/dev/null | tail -1) in $VENV ($((installed - started)) s to set up)"

# Airflow's home, config and sqlite metadata DB: a temp dir, removed at exit; no example DAGs.
AIRFLOW_HOME=$(mktemp -d -t edgefleet-airflow.XXXXXX)
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME AIRFLOW__CORE__LOAD_EXAMPLES=False
export EDGEFLEET_PYTHON=${EDGEFLEET_PYTHON:-$PWD/.venv/bin/python}
export EDGEFLEET_CLI=${EDGEFLEET_CLI:-$PWD/.venv/bin/edgefleet}
status=0
"$VENV/bin/python" -m pytest -c deployment/airflow/pytest.ini --rootdir deployment/airflow deployment/airflow/tests "$@" \
  || status=$?
echo "airflow-test: $(($(date +%s) - started)) s in all (set-up $((installed - started)) s)"
exit $status
