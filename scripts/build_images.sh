#!/usr/bin/env bash
# Build all of edgefleet's container images on a machine with no container registry: debootstrapped
# Debian base images, a pinned wheelhouse, offline image builds checked before their tags move.
# The work is done by scripts/images/ (python3 -m scripts.images, stdlib only); see --help and
# scripts/images/cli.py. The table of images and their checks is scripts/images/catalog.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 -m scripts.images "$@"
