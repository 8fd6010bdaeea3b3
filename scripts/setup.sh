#!/usr/bin/env bash
# Install everything edgefleet needs on a fresh Debian machine: Java for Spark, a venv with all extras.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
if ! java -version >/dev/null 2>&1; then need_apt+=(openjdk-17-jre-headless); fi
if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then need_apt+=(python3-venv); fi
# The offline edgeHub stand-in and the tests run real Mosquitto brokers.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then need_apt+=(mosquitto); fi
# Its journal plugin (native/broker_journal/) is built here: a compiler and the plugin headers.
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then need_apt+=(gcc libc6-dev); fi
if [ ! -f /usr/include/mosquitto_broker.h ]; then need_apt+=(mosquitto-dev); fi
if [ ! -f /usr/include/mosquitto.h ]; then need_apt+=(libmosquitto-dev); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # Debian enables a system broker on :1883; ours run on their own addresses, so stop it.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
  else
    echo "setup: please install ${need_apt[*]} (Spark needs Java 17+, the tests need mosquitto and its plugin headers), then run 'make setup' again" >&2
    exit 1
  fi
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python >= 3.11 is required, found {sys.version.split()[0]}; set PYTHON=python3.11")
PY

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[edge,edgehub,sink,dashboard,simulator,training,dev]"
# Where edgefleet.broker_journal looks for it: <venv>/lib/edgefleet/.
bash "$(dirname "${BASH_SOURCE[0]}")/build_broker_journal.sh" "$VENV/lib/edgefleet/edgefleet_journal.so"
echo "setup: ready ($("$VENV/bin/python" --version), $(java -version 2>&1 | head -1), $(command -v mosquitto || echo /usr/sbin/mosquitto))"
