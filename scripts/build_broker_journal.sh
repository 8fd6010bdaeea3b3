#!/usr/bin/env bash
# Build Mosquitto's journal plugin (native/broker_journal/, see edgefleet/broker_journal.py) into OUT.
# Needs a C compiler and Debian's mosquitto-dev and libmosquitto-dev (the plugin headers); the
# plugin resolves Mosquitto's functions from the broker that loads it, so it links nothing else.
set -euo pipefail
OUT=${1:?usage: build_broker_journal.sh OUT.so}
SRC="$(dirname "${BASH_SOURCE[0]}")/../native/broker_journal/edgefleet_journal.c"
mkdir -p "$(dirname "$OUT")"
"${CC:-cc}" -O2 -shared -fPIC -Wall -Wextra -Werror -o "$OUT.tmp" "$SRC"
mv "$OUT.tmp" "$OUT"
