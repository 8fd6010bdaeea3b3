#!/usr/bin/env bash
# Build all of edgefleet's container images on a machine with no container registry.
#
#   1. base images  a minimal Debian bookworm (debootstrap --variant=minbase + python3, python3-venv,
#                   ca-certificates, then bookworm-updates and bookworm-security applied), cached as a
#                   rootfs in .cache/images/ and `docker import`ed in flavours:
#                     edgefleet/python-base:bookworm            sensor, inference, simulator
#                     edgefleet/python-base-mosquitto:bookworm  edgehub, sink (+ mosquitto)
#                     edgefleet/python-base-java:bookworm       training (+ openjdk-17-jre-headless)
#                   a flavour is the cached rootfs copied, `chroot apt-get install`ed and slimmed (its
#                   rootfs cached too). Needs root and a Debian mirror; an image is kept while it exists
#                   and matches the cached rootfs (--rebuild-base makes them all again).
#   2. wheelhouse   .cache/images/wheelhouse/: the edgefleet wheel built from this checkout (app/), a
#                   pool of every dependency wheel (pool/, downloaded once; sdists built on the host),
#                   and per image extra (edge, edgehub, sink, simulator, training) a directory of hard
#                   links to just its wheels + requirements.txt with exact pins, resolved offline
#                   against the pool and pinned to the versions in .venv when there is one (what the
#                   tests ran). Needs PyPI only for wheels not in the pool yet.
#   3. images       edgefleet-<image>:<version> (and edgefleet-inference:<bundle_version>, the bundle
#                   baked in) built with `docker build --network none` from a context holding only that
#                   image's files (a tar on stdin: no pyspark in the sensor's upload), checked (imports,
#                   uid 10001, no Spark/MLflow/pandas on the edge, Mosquitto runs, a tiny Spark training
#                   for training, ...), and only then tagged (an image identical to the one its tag
#                   names already, every layer cached, passed them then). The training image builds
#                   alongside the others (two lanes) when there are two cores.
#
# Caches live in .cache/images/ (git-ignored); a second run rebuilds only what changed. The script
# removes only images it made itself: a previous build it re-tagged away from (untagged, with its
# label) and, after --rebuild-base, the build cache on the old bases. It never prunes.
set -Eeuo pipefail

usage() {
  cat <<'EOF'
usage: scripts/build_images.sh [--bundle DIR] [--only IMAGES] [--skip IMAGES] [--rebuild-base]
                               [--jobs 1|2] [--help]

Build edgefleet's images offline (no registry): debootstrapped Debian base images, a wheelhouse
of Python wheels, then the images (default: all of them):
  sensor, inference   the IoT Edge modules (modules/<m>/Dockerfile)
  edgehub             the offline edgeHub stand-in, with Mosquitto (deployment/images/edgehub)
  sink                the local IoT Hub: Mosquitto + the parquet lake writer (deployment/images/sink)
  simulator           the device simulator (deployment/images/simulator)
  dashboard           the live fleet dashboard, Bokeh (deployment/images/dashboard)
  training            Spark + MLflow training and retraining, with Java 17 (deployment/images/training)

  --bundle DIR      model bundle to bake into the inference image (default out/demo/bundle;
                    anywhere on disk: it is copied into the build context)
  --only IMAGES     build only these images (comma-separated, e.g. --only sensor,inference)
  --skip IMAGES     build all images but these (comma-separated)
  --rebuild-base    debootstrap and import the base images again even if they exist
                    (picks up Debian security updates)
  --jobs N          docker builds at a time: 1, or 2 (the default with two cores or more: the
                    training image builds alongside the others)
  -h, --help        show this help

Environment: PYTHON (a CPython 3.11 on Linux x86_64 for pip; default .venv/bin/python, else
python3), DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
(default http://deb.debian.org/debian-security).
Needs a running Docker engine; building the base images needs root and a Debian mirror,
the wheelhouse needs PyPI for wheels not cached yet.
EOF
}

log() { printf 'build_images: %s\n' "$*"; }
die() {
  printf 'build_images: error: %s\n' "$*" >&2
  exit 1
}
on_error() {
  printf 'build_images: FAILED at line %s: %s (exit %s)\n' "$1" "$2" "$3" >&2
}
trap 'on_error "$LINENO" "$BASH_COMMAND" "$?"' ERR

# -- images -----------------------------------------------------------------------------------------
IMAGES_ALL=(sensor inference edgehub sink simulator dashboard training)
declare -A DOCKERFILE=(
  [sensor]=modules/sensor/Dockerfile [inference]=modules/inference/Dockerfile
  [edgehub]=deployment/images/edgehub/Dockerfile [sink]=deployment/images/sink/Dockerfile
  [simulator]=deployment/images/simulator/Dockerfile [training]=deployment/images/training/Dockerfile
  [dashboard]=deployment/images/dashboard/Dockerfile
)
# the pyproject.toml extra each image installs (its wheel directory in the wheelhouse)
declare -A EXTRA=([sensor]=edge [inference]=edge [edgehub]=edgehub [sink]=sink [simulator]=simulator [training]=training
  [dashboard]=dashboard)
# the base image flavour each image builds on
declare -A FLAVOUR=([sensor]=base [inference]=base [simulator]=base [dashboard]=base [edgehub]=mosquitto [sink]=mosquitto
  [training]=java)
FLAVOURS_ALL=(base mosquitto java)
declare -A FLAVOUR_IMAGE=(
  [base]=edgefleet/python-base:bookworm
  [mosquitto]=edgefleet/python-base-mosquitto:bookworm
  [java]=edgefleet/python-base-java:bookworm
)
# Debian packages a flavour adds to the rootfs (Spark 4 runs on Java 17; it needs no `ps`)
declare -A FLAVOUR_PACKAGES=([base]="" [mosquitto]=mosquitto [java]=openjdk-17-jre-headless)

# -- options ------------------------------------------------------------------------------------
BUNDLE=out/demo/bundle
ONLY=""
SKIP=""
REBUILD_BASE=0
JOBS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle)
      [[ $# -ge 2 ]] || die "--bundle needs a directory"
      BUNDLE=$2
      shift 2
      ;;
    --bundle=*) BUNDLE=${1#*=}; shift ;;
    --only)
      [[ $# -ge 2 ]] || die "--only needs image names (${IMAGES_ALL[*]})"
      ONLY=$2
      shift 2
      ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --skip)
      [[ $# -ge 2 ]] || die "--skip needs image names (${IMAGES_ALL[*]})"
      SKIP=$2
      shift 2
      ;;
    --skip=*) SKIP=${1#*=}; shift ;;
    --jobs)
      [[ $# -ge 2 ]] || die "--jobs needs 1 or 2"
      JOBS=$2
      shift 2
      ;;
    --jobs=*) JOBS=${1#*=}; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for name in ${ONLY//,/ }; do
  [[ -n ${DOCKERFILE[$name]:-} ]] || die "--only: unknown image '$name' (images: ${IMAGES_ALL[*]})"
done
for name in ${SKIP//,/ }; do
  [[ -n ${DOCKERFILE[$name]:-} ]] || die "--skip: unknown image '$name' (images: ${IMAGES_ALL[*]})"
done
IMAGES=()
for name in "${IMAGES_ALL[@]}"; do
  if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then continue; fi
  if [[ ",$SKIP," == *",$name,"* ]]; then continue; fi
  IMAGES+=("$name")
done
[[ ${#IMAGES[@]} -gt 0 ]] || die "--only/--skip leave no image to build"
case "$JOBS" in
  "") if [[ $(nproc) -ge 2 ]]; then JOBS=2; else JOBS=1; fi ;;
  1 | 2) ;;
  *) die "--jobs takes 1 or 2, not '$JOBS'" ;;
esac
has_image() { [[ " ${IMAGES[*]} " == *" $1 "* ]]; }
FLAVOURS=()   # base flavours the selected images need
EXTRAS=()     # wheelhouse extras the selected images need
for f in "${FLAVOURS_ALL[@]}"; do
  for name in "${IMAGES[@]}"; do
    if [[ ${FLAVOUR[$name]} == "$f" ]]; then FLAVOURS+=("$f"); break; fi
  done
done
for name in "${IMAGES[@]}"; do
  [[ " ${EXTRAS[*]} " == *" ${EXTRA[$name]} "* ]] || EXTRAS+=("${EXTRA[$name]}")
done

# -- layout ---------------------------------------------------------------------------------------
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[[ "$ROOT" != *[[:space:]]* ]] || die "the repository path '$ROOT' contains whitespace; move it"
if [[ -n $BUNDLE && $BUNDLE != /* ]]; then BUNDLE="$ROOT/$BUNDLE"; fi

CACHE_REL=.cache/images               # relative to the repository root (the by-hand build context)
CACHE="$ROOT/$CACHE_REL"
ROOTFS="$CACHE/rootfs-bookworm"
WHEELHOUSE_REL="$CACHE_REL/wheelhouse"
WH="$ROOT/$WHEELHOUSE_REL"
POOL="$WH/pool"
CONTEXT_REL="$CACHE_REL/context"
LOGS="$CACHE/logs"

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# libstdc++6 (onnxruntime, scikit-learn) comes with apt anyway; named so it stays if apt goes.
BASE_PACKAGES=python3,python3-venv,ca-certificates,libstdc++6
LABEL_BY=org.edgefleet.built-by=scripts/build_images.sh

now_us() { echo "${EPOCHREALTIME/./}"; }
seconds_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# -- preflight ------------------------------------------------------------------------------------
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine ('docker info' fails); start it or check permissions"
arch=$(docker info -f '{{.Architecture}}')
[[ $arch == x86_64 ]] || die "the engine runs on $arch; the wheelhouse is for linux x86_64 (manylinux) only"
if ! docker buildx version >/dev/null 2>&1; then
  unset DOCKER_BUILDKIT # no buildx plugin: docker falls back to the classic builder (with a deprecation note)
fi

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" - <<'PY' || die "PYTHON=$PYTHON must be CPython 3.11 on Linux x86_64 with pip: the wheels must fit the image's Python (Debian bookworm: 3.11)"
import platform, sys
import pip  # noqa: F401
ok = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64"
sys.exit(0 if ok else 1)
PY
pip_() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
PROJECT=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["name"])')
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $REVISION != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  REVISION="$REVISION-dirty"
fi

BUNDLE_VERSION=""
if has_image inference; then
  [[ -f "$BUNDLE/manifest.json" ]] ||
    die "no model bundle at $BUNDLE (no manifest.json): pass --bundle DIR with a bundle from 'edgefleet train --out DIR' (or run 'make demo' for out/demo/bundle), or leave the inference image out (--skip inference)"
  BUNDLE_VERSION=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle_version"])' "$BUNDLE/manifest.json") ||
    die "$BUNDLE/manifest.json has no bundle_version"
  [[ $BUNDLE_VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "bundle_version '$BUNDLE_VERSION' is not a valid image tag"
fi

mkdir -p "$CACHE" "$LOGS"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another build_images.sh is running on this checkout (lock: $CACHE/.lock)"
# What the steps and the (possibly parallel) image builds report, collected for the summary.
RUN=$(mktemp -d "${TMPDIR:-/tmp}/build_images.XXXXXX")
touch "$RUN/steps" "$RUN/replaced" "$RUN/summary"
step_done() { printf '%s|%s\n' "$1" "$(seconds_since "$2")" >>"$RUN/steps"; } # $1 name, $2 start (now_us)

# -- helpers for the rootfs ---------------------------------------------------------------------------
# Mount points at or under $1, deepest first (debootstrap mounts /proc, /sys, ... in the target).
mounts_under() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}
unmount_under() {
  local m
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done < <(mounts_under "$1")
}
# rm -rf a directory this script owns, never following a mount out of it.
remove_tree() {
  local dir=$1
  [[ $dir == "$CACHE"/?* ]] || die "refusing to remove $dir: not under $CACHE"
  [[ -e $dir ]] || return 0
  unmount_under "$dir"
  [[ -z $(mounts_under "$dir") ]] || die "cannot unmount everything under $dir; unmount by hand and rerun"
  rm -rf --one-file-system -- "$dir"
}
BG_PIDS=()       # background steps of this run: stopped if the run ends early
cleanup_on_exit() {
  local pid tag d
  for pid in "${BG_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  for d in "$CACHE"/rootfs-*.tmp; do [[ -d $d ]] && unmount_under "$d"; done
  # images built but never checked (this run's candidate tags) are not left behind
  while read -r tag; do
    [[ $tag == *":unchecked-$$" ]] && docker image rm "$tag" >/dev/null 2>&1
  done < <(docker images --filter 'reference=edgefleet-*' --format '{{.Repository}}:{{.Tag}}' 2>/dev/null || true)
  rm -rf "$RUN"
  return 0
}
trap cleanup_on_exit EXIT

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
note_replaced() { # $1 old id (maybe empty), $2 tag now pointing elsewhere
  local new
  new=$(image_id "$2")
  if [[ -n $1 && $1 != "$new" ]]; then echo "$1" >>"$RUN/replaced"; fi
}
need_root() { # $1 what needs it
  [[ $(id -u) -eq 0 ]] ||
    die "$1 needs root (debootstrap and chroot, root-owned files): rerun as root, e.g. 'sudo scripts/build_images.sh'; once the base images exist, root is no longer needed"
}

# -- 1. base images ---------------------------------------------------------------------------------
slim_rootfs() {
  local r=$1
  [[ -d $r/usr && -d $r/etc ]] || die "$r does not look like a rootfs"
  # apt's package lists and downloaded packages (`apt-get update` fetches lists again when needed)
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
  # documentation, man pages, translations; the copyright files stay
  find "$r/usr/share/doc" ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/usr/share/lintian/*
  find "$r/var/log" -type f -exec truncate -s 0 {} +
  rm -f "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old
  # the host's resolver and name: Docker provides its own at run time
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
  touch "$r/etc/resolv.conf" "$r/etc/hostname"
  # packages installed later (apt-get in a derived Dockerfile) stay slim too, as in Debian's slim images
  cat >"$r/etc/dpkg/dpkg.cfg.d/01-edgefleet-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$r/etc/apt/apt.conf.d/01-edgefleet-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
}

# debootstrap installs from the release suite only: add -updates and -security (as Debian's own
# images have them) and apply what they hold.
update_rootfs() {
  local r=$1
  [[ -d $r/etc/apt ]] || die "$r does not look like a rootfs"
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  log "applying $SUITE-updates and $SUITE-security"
  { chroot "$r" apt-get update -qq &&
    chroot "$r" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade &&
    chroot "$r" apt-get -qq clean; } >>"$LOGS/debootstrap.log" 2>&1 ||
    { tail -n 25 "$LOGS/debootstrap.log" >&2; die "updating the rootfs failed (log: $LOGS/debootstrap.log)"; }
}

build_rootfs() {
  local tmp="$ROOTFS.tmp"
  remove_tree "$tmp"
  log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR into $ROOTFS (a minute or more; log: $LOGS/debootstrap.log)"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" --components=main \
    "$SUITE" "$tmp" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1; then
    tail -n 25 "$LOGS/debootstrap.log" >&2
    unmount_under "$tmp"
    die "debootstrap failed (full log: $LOGS/debootstrap.log)"
  fi
  unmount_under "$tmp"
  update_rootfs "$tmp"
  slim_rootfs "$tmp"
  remove_tree "$ROOTFS"
  rm -f "$ROOTFS.complete"
  mv "$tmp" "$ROOTFS"
  date -u +%FT%TZ >"$ROOTFS.complete"
}

ROOTFS_READY=0   # this run made or checked the rootfs already
ensure_rootfs() {
  [[ $ROOTFS_READY -eq 0 ]] || return 0
  ROOTFS_READY=1
  if [[ $REBUILD_BASE -eq 0 && -f "$ROOTFS.complete" ]]; then
    log "reusing the rootfs debootstrapped on $(cat "$ROOTFS.complete") in $ROOTFS"
    return 0
  fi
  need_root "building the base images"
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "debootstrap is not installed and there is no apt-get to install it"
    log "installing debootstrap with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >"$LOGS/apt.log" 2>&1 ||
      die "apt-get install debootstrap failed (log: $LOGS/apt.log)"
  fi
  local t
  t=$(now_us)
  build_rootfs
  step_done "base rootfs (debootstrap)" "$t"
}

# A flavour's rootfs: the base rootfs copied, its packages installed in a chroot (no service starts:
# policy-rc.d), slimmed. Cached in $CACHE/rootfs-bookworm-<flavour>, marked with the base's date.
build_flavour_rootfs() { # $1 flavour
  local f=$1 dest="$ROOTFS-$1" tmp="$ROOTFS-$1.tmp" flog="$LOGS/flavour-$1.log"
  remove_tree "$tmp"
  log "base flavour $f: installing ${FLAVOUR_PACKAGES[$f]} into a copy of the rootfs (log: $flog)"
  cp -a "$ROOTFS" "$tmp"
  cp -L /etc/resolv.conf "$tmp/etc/resolv.conf" # apt fetches through the host's resolver
  printf '#!/bin/sh\n# no service starts in a chroot\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 755 "$tmp/usr/sbin/policy-rc.d"
  mkdir -p "$tmp/usr/share/man/man1" # the JRE's alternatives link man pages there (path-excluded)
  mount -t proc proc "$tmp/proc"       # the JRE's postinst runs java (ca-certificates-java)
  # shellcheck disable=SC2086 # FLAVOUR_PACKAGES: a list of package names
  if ! { chroot "$tmp" apt-get update -qq &&
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 \
      ${FLAVOUR_PACKAGES[$f]} &&
    chroot "$tmp" apt-get -qq clean; } >"$flog" 2>&1; then
    tail -n 25 "$flog" >&2
    unmount_under "$tmp"
    die "installing ${FLAVOUR_PACKAGES[$f]} into the $f flavour failed (log: $flog)"
  fi
  unmount_under "$tmp"
  rm -f "$tmp/usr/sbin/policy-rc.d"
  slim_rootfs "$tmp"
  remove_tree "$dest"
  rm -f "$dest.complete"
  mv "$tmp" "$dest"
  cp "$ROOTFS.complete" "$dest.complete"
}

import_flavour() { # $1 flavour: import its rootfs as its image and check it
  local f=$1 image=${FLAVOUR_IMAGE[$1]} dir=$ROOTFS packages=$BASE_PACKAGES old check
  if [[ $f != base ]]; then
    dir="$ROOTFS-$f"
    packages="$packages,${FLAVOUR_PACKAGES[$f]// /,}"
    if [[ ! -f "$dir.complete" || $(cat "$dir.complete") != "$(cat "$ROOTFS.complete")" ]]; then
      build_flavour_rootfs "$f"
    fi
  fi
  log "importing $dir as $image"
  old=$(image_id "$image")
  tar --numeric-owner -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $LABEL_BY" \
    --change "LABEL org.edgefleet.debian-snapshot=$(cat "$ROOTFS.complete")" \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$packages $SUITE" \
    - "$image" >/dev/null
  note_replaced "$old" "$image"
  check='python3 -c "import ensurepip, ssl, venv"'
  case $f in
    mosquitto) check="$check && mosquitto -h | grep '^mosquitto version'" ;;
    java) check="$check && java -version 2>&1 | head -n 1" ;;
  esac
  docker run --rm --network none --entrypoint sh "$image" -ec "$check" ||
    die "the new $image fails its check ($check)"
}

# Each flavour named: kept while its image exists and is made from the cached rootfs (or there is
# no rootfs to compare with), else imported (its rootfs made first when needed). Marks each ready
# for image builds in another lane (wait_flavour).
ensure_base_images() { # flavours
  local f missing=0 snapshot="" label t
  for f in "$@"; do
    docker image inspect "${FLAVOUR_IMAGE[$f]}" >/dev/null 2>&1 || missing=1
  done
  if [[ $REBUILD_BASE -eq 1 || $missing -eq 1 ]]; then ensure_rootfs; fi
  if [[ -f "$ROOTFS.complete" ]]; then snapshot=$(cat "$ROOTFS.complete"); fi
  for f in "$@"; do
    label=$(docker image inspect -f '{{index .Config.Labels "org.edgefleet.debian-snapshot"}}' "${FLAVOUR_IMAGE[$f]}" 2>/dev/null || true)
    if [[ $REBUILD_BASE -eq 0 && -n $label && (-z $snapshot || $label == "$snapshot") ]]; then
      log "base image ${FLAVOUR_IMAGE[$f]} exists ($label); kept (--rebuild-base makes it again)"
    else
      need_root "importing the base images"
      [[ -f "$ROOTFS.complete" ]] || ensure_rootfs
      t=$(now_us)
      import_flavour "$f"
      step_done "base ${FLAVOUR_IMAGE[$f]#edgefleet/}" "$t"
    fi
    touch "$RUN/flavour-$f.ready"
  done
}

# Until the base flavour is ready (made by the other lane): an image build waits for its base.
LANE_A_PID=""
wait_flavour() { # $1 flavour
  while [[ ! -f "$RUN/flavour-$1.ready" ]]; do
    if [[ -z $LANE_A_PID ]] || ! kill -0 "$LANE_A_PID" 2>/dev/null; then
      [[ -f "$RUN/flavour-$1.ready" ]] || die "the base image ${FLAVOUR_IMAGE[$1]} was not made (above)"
    fi
    sleep 1
  done
}

# -- 2. wheelhouse --------------------------------------------------------------------------------
# Source files of the checkout: tracked and untracked-but-not-ignored (what a commit would hold).
list_sources() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    local f
    while IFS= read -r -d '' f; do
      [[ -e $f ]] && printf '%s\0' "$f"
    done < <(git ls-files -z --cached --others --exclude-standard --deduplicate -- . ':(exclude).cache')
  else
    find . \( -path ./.git -o -path ./.venv -o -path ./.cache -o -path ./out -o -name __pycache__ \
      -o -name '*.egg-info' -o -path ./build \) -prune -o -type f -print0
  fi
}

# Resolve each needed extra offline against the pool; write its directory (requirements.txt and
# hard links). Fails when the pool lacks a wheel. The extras resolve in parallel.
lock_extras() { # $1 requirement spec of the app wheel (without extras), $2 constraints file
  local extra pids=() status=0 i
  for extra in "${EXTRAS[@]}"; do
    (
      pip_ --isolated install --quiet --dry-run --ignore-installed --no-index --find-links "$POOL" \
        --constraint "$2" --report "$CACHE/resolve-$extra.json" "${PROJECT}[$extra] @ $1" \
        >"$LOGS/resolve-$extra.log" 2>&1 || exit 1
      locked=$("$PYTHON" scripts/images/lock_wheelhouse.py "$CACHE/resolve-$extra.json" "$POOL" "$WH/$extra" "$PROJECT" "$extra" \
        2>>"$LOGS/resolve-$extra.log") || exit 1
      echo "$extra: $locked" >"$RUN/lock-$extra"
    ) &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || status=1; done
  return $status
}

build_wheelhouse() {
  local t
  t=$(now_us)
  mkdir -p "$POOL" "$WH/app" "$CACHE/build-deps"
  rm -f "$CACHE/resolve.json" # the layout before per-image directories
  if [[ -d $WH/deps ]]; then # the layout before per-image directories: its wheels join the pool
    find "$WH/deps" -maxdepth 1 -name '*.whl' -exec mv -n -t "$POOL" {} +
    rm -rf "$WH/deps"
  fi
  # a) what pyproject.toml's [build-system] needs, cached so the project wheel builds offline
  local build_reqs=()
  mapfile -t build_reqs < <("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
  build_reqs+=(wheel)
  if ! pip_ --isolated download --quiet --no-index --find-links "$CACHE/build-deps" --dest "$CACHE/build-deps" \
    "${build_reqs[@]}" >/dev/null 2>&1; then
    log "downloading the build requirements (${build_reqs[*]})"
    pip_ download --quiet --dest "$CACHE/build-deps" "${build_reqs[@]}" || die "cannot download ${build_reqs[*]} from PyPI"
  fi

  # b) the edgefleet wheel, from a clean copy of the checkout (an in-tree build/ could carry stale files);
  #    a fixed SOURCE_DATE_EPOCH makes it byte-identical while the code is, so Docker's layer cache holds
  local src="$CACHE/src" out="$CACHE/app.tmp"
  remove_tree "$src"
  remove_tree "$out"
  mkdir -p "$src" "$out"
  list_sources | tar --null -T - -cf - | tar -C "$src" -xf -
  SOURCE_DATE_EPOCH=315532800 pip_ --isolated wheel --quiet --no-deps --no-index --find-links "$CACHE/build-deps" \
    --wheel-dir "$out" "$src" >"$LOGS/wheel-app.log" 2>&1 ||
    { tail -n 30 "$LOGS/wheel-app.log" >&2; die "building the $PROJECT wheel failed (log: $LOGS/wheel-app.log)"; }
  local wheels=("$out"/*.whl)
  [[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || die "expected one wheel in $out, found: ${wheels[*]}"
  local app_name
  app_name=$(basename "${wheels[0]}")
  if ! cmp -s "${wheels[0]}" "$WH/app/$app_name"; then
    rm -f "$WH"/app/*.whl
    mv "${wheels[0]}" "$WH/app/$app_name"
  fi
  remove_tree "$out"
  remove_tree "$src"
  local app="file://$WH/app/$app_name"

  # c) pins: the versions installed in .venv when there is a .venv
  local constraints="$CACHE/constraints.txt"
  if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' >"$constraints" || true
    log "wheelhouse: pinned to the versions installed in .venv ($(wc -l <"$constraints") packages)"
  else
    : >"$constraints"
    log "wheelhouse: no .venv, so the newest versions pyproject.toml allows"
  fi

  # d) each extra resolved offline against the pool; when a wheel is missing, pip fetches every needed
  #    extra's wheels at once (sdists such as paho-mqtt 1.6 and pyspark are built here, on the host,
  #    so no image needs a compiler), then the extras resolve again
  if lock_extras "$app" "$constraints"; then
    log "wheelhouse: every wheel was in the pool"
  else
    local all
    all="${PROJECT}[$(IFS=,; echo "${EXTRAS[*]}")] @ $app"
    log "wheelhouse: fetching missing wheels for ${EXTRAS[*]} from PyPI (log: $LOGS/wheelhouse.log)"
    pip_ wheel --find-links "$POOL" --wheel-dir "$POOL" --constraint "$constraints" "$all" \
      >"$LOGS/wheelhouse.log" 2>&1 ||
      { tail -n 30 "$LOGS/wheelhouse.log" >&2; die "pip could not fetch/build the wheels (log: $LOGS/wheelhouse.log)"; }
    rm -f "$POOL/$PROJECT"-*.whl
    lock_extras "$app" "$constraints" ||
      { cat "$LOGS"/resolve-*.log | tail -n 30 >&2; die "the wheelhouse does not resolve offline (logs: $LOGS/resolve-*.log)"; }
  fi
  cat "$RUN"/lock-* | sed 's/^/build_images: wheelhouse: /'
  # e) pool wheels no image directory links to any more (older pins): removed
  local stale
  stale=$(find "$POOL" -maxdepth 1 -name '*.whl' -links 1 -printf '%f\n')
  if [[ -n $stale ]]; then
    log "wheelhouse: removing $(wc -l <<<"$stale") wheel(s) nothing needs any more"
    while read -r w; do rm -f -- "${POOL:?}/$w"; done <<<"$stale"
  fi
  log "wheelhouse: $(du -sh "$POOL" | cut -f1) in the pool ($app_name)"
  step_done wheelhouse "$t"
}

# -- 3. images -------------------------------------------------------------------------------------------
stage_bundle() {
  local dest="$CACHE/context/bundle"
  if [[ $(realpath "$BUNDLE") == "$(realpath -m "$dest")" ]]; then
    log "bundle $BUNDLE_VERSION is already staged in $dest"
    return 0
  fi
  remove_tree "$dest"
  mkdir -p "$CACHE/context"
  cp -R --preserve=timestamps "$BUNDLE" "$dest"
  chmod -R u=rwX,go=rX "$dest" # world-readable: the module runs as uid 10001, the files stay root's
  log "bundle $BUNDLE_VERSION staged from $BUNDLE ($(du -sh "$dest" | cut -f1))"
}

run_check() { # $1 image, rest: check_image.py arguments (runs as the image's user, offline)
  docker run --rm -i --network none --entrypoint python "$1" - "${@:2}" <scripts/images/check_image.py
}

# The checks of one image; prints what it checked, returns 1 on the first failure.
check_image() { # $1 image name, $2 image
  local name=$1 image=$2 uid health out
  case $name in
    sensor) run_check "$image" --forbid pyspark,mlflow,pandas --import modules.sensor.service || return 1 ;;
    inference)
      run_check "$image" --forbid pyspark,mlflow,pandas \
        --import modules.inference.service,onnxruntime,sklearn --bundle /app/bundle || return 1
      ;;
    edgehub)
      run_check "$image" --forbid pyspark,mlflow,pandas --import edgehub.standin,cryptography \
        --mosquitto --writable /var/lib/edgefleet/edgehub,/tmp --json-file /etc/edgefleet/deployment.json || return 1
      ;;
    sink)
      run_check "$image" --forbid pyspark,mlflow --import edgehub.sink,pyarrow \
        --mosquitto --writable /lake,/var/lib/edgefleet/sink,/tmp || return 1
      ;;
    simulator) run_check "$image" --forbid pyspark,mlflow,pandas,pyarrow --import simulator.run || return 1 ;;
    dashboard) run_check "$image" --forbid pyspark,mlflow,pyarrow --import dashboard.app,bokeh || return 1 ;;
    training)
      # for real, in one container (offline, as the image's user): Java, a writable HOME and /tmp, a
      # tiny fleet trained on Spark (local mode), exported with ONNX, tracked in MLflow (sqlite),
      # the bundle verified. (--hostname localhost: with no network the container's name does not
      # resolve, which Spark survives but logs at length.)
      out=$(docker run --rm --network none --hostname localhost --entrypoint sh "$image" -ec '
        java -version 2>&1 | head -n 1
        touch "$HOME/.write-check" /tmp/.write-check && rm "$HOME/.write-check" /tmp/.write-check
        echo "writable: HOME=$HOME and /tmp"
        edgefleet generate-history --devices 5 --rows 120 --out /tmp/history.parquet
        edgefleet train --history /tmp/history.parquet --out /tmp/bundle --tracking-uri sqlite:////tmp/mlflow.db --quiet
        edgefleet bundle verify /tmp/bundle' 2>&1) || { echo "$out"; echo "FAIL the tiny training run (above)"; return 1; }
      grep -E '^(openjdk|writable|wrote|bundle)' <<<"$out" || true
      ;;
  esac
  uid=$(docker run --rm --network none --entrypoint id "$image" -u) || return 1
  [[ $uid == 10001 ]] || { echo "FAIL runs as uid $uid, not 10001"; return 1; }
  echo "runs as uid $uid"
  if [[ ${DOCKERFILE[$name]} == deployment/* ]]; then # ENTRYPOINT ["edgefleet"]
    out=$(docker run --rm --network none "$image" --help) && [[ $out == "usage: edgefleet"* ]] ||
      { echo "FAIL 'edgefleet --help' (the entry point) does not run"; return 1; }
    echo "entry point: edgefleet"
  fi
  health=$(docker image inspect -f '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$image")
  case $name in
    simulator | training) [[ $health == NONE ]] || { echo "FAIL a batch job with a health check ($health)"; return 1; } ;;
    *) [[ $health == *edgefleet.health* ]] || { echo "FAIL no health check (${health:-none})"; return 1; } ;;
  esac
  echo "health check: ${health}"
}

build_image() { # $1 image name
  local name=$1 started built tags=() args=() files=() blog="$LOGS/build-$1.log" clog="$LOGS/check-$1.log"
  local dockerfile=${DOCKERFILE[$1]} extra=${EXTRA[$1]} base=${FLAVOUR_IMAGE[${FLAVOUR[$1]}]}
  wait_flavour "${FLAVOUR[$name]}"
  started=$(now_us)
  tags=("edgefleet-$name:$VERSION")
  args=(--build-arg "BASE_IMAGE=$base" --build-arg "WHEELHOUSE=$WHEELHOUSE_REL")
  if [[ $dockerfile == deployment/* ]]; then # labelled in one step of their own (ARG REVISION, BUILT_BY)
    args+=(--build-arg "REVISION=$REVISION" --build-arg "BUILT_BY=${LABEL_BY#*=}")
  else
    args+=(--label "$LABEL_BY" --label "org.opencontainers.image.revision=$REVISION")
  fi
  # the build context: this image's files only, at their paths in the repository
  files=("$dockerfile" "$WHEELHOUSE_REL/$extra" "$WHEELHOUSE_REL/app")
  case $name in
    inference)
      stage_bundle
      tags+=("edgefleet-$name:$BUNDLE_VERSION")
      args+=(--build-arg "BUNDLE=$CONTEXT_REL/bundle" --label "org.edgefleet.bundle-version=$BUNDLE_VERSION")
      files+=("$CONTEXT_REL/bundle")
      ;;
    edgehub) files+=(deployment/deployment.template.json) ;;
  esac
  # Built under a candidate tag and checked; only then does it get the real tags, so a failed
  # build or check leaves the previous images where they were. A candidate tag left by a run that
  # was killed (its process is gone) is dropped here.
  local stale
  while read -r stale; do
    if [[ $stale =~ :unchecked-([0-9]+)$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
      docker image rm "$stale" >/dev/null 2>&1 || true
    fi
  done < <(docker images --format '{{.Repository}}:{{.Tag}}' "edgefleet-$name")
  local candidate="edgefleet-$name:unchecked-$$"
  log "[$name] docker build --network none -f $dockerfile ${args[*]} -t $candidate - (context $(du -cshL "${files[@]}" | tail -n 1 | cut -f1); log: $blog)"
  # --network none: RUN steps cannot reach any index, so the build is offline by construction
  if ! tar -C "$ROOT" --sort=name --owner=0 --group=0 --numeric-owner -cf - "${files[@]}" |
    docker build --force-rm --network none -f "$dockerfile" "${args[@]}" -t "$candidate" - >"$blog" 2>&1; then
    tail -n 30 "$blog" >&2
    die "docker build of edgefleet-$name failed (log: $blog)"
  fi
  built=$(seconds_since "$started")
  local checked check_s
  checked=$(now_us)
  if [[ $(image_id "$candidate") == "$(image_id "${tags[0]}")" ]]; then
    # every layer came from the cache: the very image that passed its checks when it was tagged
    log "[$name] built in $built s: unchanged, the image ${tags[0]} is (checked when it was tagged)"
    check_s=same
  else
    log "[$name] built in $built s; checking $candidate"
    if ! check_image "$name" "$candidate" >"$clog" 2>&1; then
      sed "s/^/  [$name] /" "$clog" >&2
      die "the new image edgefleet-$name failed its checks (above; log: $clog); the previous images keep their tags"
    fi
    sed "s/^/  [$name] /" "$clog"
    check_s=$(seconds_since "$checked")
  fi
  local t old
  for t in "${tags[@]}"; do
    old=$(image_id "$t")
    docker tag "$candidate" "$t"
    note_replaced "$old" "$t"
  done
  docker image rm "$candidate" >/dev/null # the tag only: the image keeps its real tags
  log "[$name] tagged ${tags[*]}"
  printf '%s|%s|%s|%s\n' "$name" "${tags[*]}" "$built" "$check_s" >>"$RUN/summary"
  step_done "image $name" "$started"
}

build_lane() { # image names, built in order
  local name
  for name in "$@"; do build_image "$name"; done
}

# The classic builder keeps every stage's layers as untagged images (its cache). Those built on a
# replaced image (an old base, after --rebuild-base) can never be used again: remove them.
# Only untagged, childless images whose parent chain reaches $1 are touched.
remove_stale_cache_on() {
  local old=$1 leaf p n=0
  while read -r leaf; do
    [[ -n $leaf ]] || continue
    [[ $leaf != "$old" ]] || continue
    p=$leaf
    while [[ -n $p && $p != "$old" ]]; do p=$(docker image inspect -f '{{.Parent}}' "$p" 2>/dev/null || true); done
    if [[ $p == "$old" ]] && docker image rm "$leaf" >/dev/null 2>&1; then n=$((n + 1)); fi
  done < <(docker images --filter dangling=true --quiet --no-trunc)
  if [[ $n -gt 0 ]]; then log "removed $n stale build-cache image(s) built on ${old:7:12}"; fi
  return 0
}

# Images this run re-tagged away from: remove them when nothing else names them and they are ours.
# Newest first: a replaced base image is still the parent of the module images replaced after it.
remove_replaced() {
  local ids=() i id
  mapfile -t ids <"$RUN/replaced"
  for ((i = ${#ids[@]} - 1; i >= 0; i--)); do
    id=${ids[$i]}
    [[ -n $(docker image inspect -f '{{index .Config.Labels "org.edgefleet.built-by"}}' "$id" 2>/dev/null) ]] || continue
    [[ $(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null) == 0 ]] || continue
    remove_stale_cache_on "$id"
    # removing the last image built on it may have removed it already (untagged parents go along)
    if ! docker image inspect "$id" >/dev/null 2>&1 || docker image rm "$id" >/dev/null 2>&1; then
      log "removed the previous build ${id:7:12} (replaced)"
    else
      log "kept the previous build ${id:7:12}: other images still use it"
    fi
  done
}

mb() { awk -v s="$1" 'BEGIN { printf "%.1f", s / 1e6 }'; }

# Layers the images share (the classic builder names every layer's image, so equal ids are shared):
# per image its own layers' size, and what all of them take on disk together.
print_layers() { # image refs
  local ref
  for ref in "$@"; do
    docker history --no-trunc --human=false --format '{{.ID}} {{.Size}}' "$ref" | sed "s|^|$ref |"
  done | awk '
    !($1 in known) { known[$1] = 1; refs[++m] = $1 }
    $2 != "<missing>" { size[$2] = $3; if (!(($1, $2) in seen)) { seen[$1, $2] = 1; users[$2]++; rows[++n] = $1 " " $2 } }
    END {
      for (i = 1; i <= n; i++) { split(rows[i], r, " "); if (users[r[2]] == 1) own[r[1]] += size[r[2]] }
      for (id in size) disk += size[id]
      for (i = 1; i <= m; i++) printf "  %-46s %7.1f MB in layers no other image here has\n", refs[i], own[refs[i]] / 1e6
      printf "  all of the above together: %.1f MB on disk (shared layers counted once)\n", disk / 1e6
    }'
}

# -- run -----------------------------------------------------------------------------------------------
TOTAL_START=$(now_us)
log "images: ${IMAGES[*]} (base flavours: ${FLAVOURS[*]}; wheelhouse extras: ${EXTRAS[*]}; $JOBS build(s) at a time)"
# The base images (debootstrap, apt: Debian's mirror) and the wheelhouse (pip: PyPI) are independent:
# made side by side.
# Two lanes (--jobs 2, training and more): lane A makes the base flavours the first image of lane B
# does not need, then the training image (the longest build); lane B builds the others, each once
# its base is ready. Sensor and inference stay in one lane, in order, so inference reuses the
# layers sensor made (identical up to the app).
LANE_A=()
LANE_B=()
for name in "${IMAGES[@]}"; do
  if [[ $JOBS -eq 2 && $name == training && ${#IMAGES[@]} -gt 1 ]]; then LANE_A+=("$name"); else LANE_B+=("$name"); fi
done
EARLY_FLAVOURS=("${FLAVOURS[@]}")
LATE_FLAVOURS=()
if [[ ${#LANE_A[@]} -gt 0 ]]; then
  EARLY_FLAVOURS=("${FLAVOUR[${LANE_B[0]}]}")
  for f in "${FLAVOURS[@]}"; do [[ $f == "${EARLY_FLAVOURS[0]}" ]] || LATE_FLAVOURS+=("$f"); done
fi

build_wheelhouse &
BG_PIDS+=($!)
wheelhouse_pid=$!
ensure_base_images "${EARLY_FLAVOURS[@]}"
wait "$wheelhouse_pid" || die "making the wheelhouse failed (above)"

if [[ ${#LANE_A[@]} -gt 0 ]]; then
  (
    ensure_base_images "${LATE_FLAVOURS[@]}"
    build_lane "${LANE_A[@]}"
  ) &
  LANE_A_PID=$!
  BG_PIDS+=("$LANE_A_PID")
  build_lane "${LANE_B[@]}"
  wait "$LANE_A_PID" || die "lane A (${LATE_FLAVOURS[*]} base, ${LANE_A[*]}) failed (above)"
else
  build_lane "${LANE_B[@]}"
fi
remove_replaced

echo
echo "== build_images summary ($PROJECT $VERSION, revision $REVISION) =="
printf '%-48s %10s %8s %8s\n' IMAGE SIZE BUILD_S CHECK_S
refs=()
for name in "${IMAGES_ALL[@]}"; do
  row=$(grep "^$name|" "$RUN/summary" || true)
  [[ -n $row ]] || continue
  IFS='|' read -r _ tags built checked <<<"$row"
  image=${tags%% *}
  refs+=("$image")
  printf '%-48s %7s MB %8s %8s\n' "$image" "$(mb "$(docker image inspect -f '{{.Size}}' "$image")")" "$built" "$checked"
  for tag in $tags; do [[ $tag == "$image" ]] || printf '  also tagged %s\n' "$tag"; done
done
for f in "${FLAVOURS[@]}"; do
  refs+=("${FLAVOUR_IMAGE[$f]}")
  printf '%-48s %7s MB %8s %8s\n' "${FLAVOUR_IMAGE[$f]} (base)" "$(mb "$(docker image inspect -f '{{.Size}}' "${FLAVOUR_IMAGE[$f]}")")" - -
done
echo
echo "shared layers:"
print_layers "${refs[@]}"
echo
echo "steps (wall clock; the base images and the wheelhouse run side by side, so do the two build lanes):"
while IFS='|' read -r step secs; do
  printf '  %-40s %8s s\n' "$step" "$secs"
done <"$RUN/steps"
printf '  %-40s %8s s\n' total "$(seconds_since "$TOTAL_START")"
