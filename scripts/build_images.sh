#!/usr/bin/env bash
# Build edgefleet's container images on a machine with no container registry.
#
#   1. base image  edgefleet/python-base:bookworm: a minimal Debian bookworm (debootstrap
#                  --variant=minbase + python3, python3-venv, ca-certificates, then bookworm-updates
#                  and bookworm-security applied), `docker import`ed. Needs root and a Debian mirror;
#                  skipped while the image exists (--rebuild-base makes it again).
#   2. wheelhouse  .cache/images/wheelhouse/: the edgefleet wheel built from this checkout (app/) and
#                  every wheel its `edge` extra needs (deps/, pinned in deps/requirements.txt to the
#                  versions in .venv when there is one: what the tests ran). Needs PyPI only for
#                  wheels not cached yet.
#   3. images      edgefleet-sensor:<version>, edgefleet-inference:<version> and
#                  edgefleet-inference:<bundle_version> (the bundle baked in), built from
#                  modules/<m>/Dockerfile with no network, checked (no Spark/MLflow/pandas, imports,
#                  bundle verified and predicting, uid 10001), and only then tagged.
#
# Caches live in .cache/images/ (git-ignored); a second run rebuilds only what changed. The script
# removes only images it made itself: a previous build it re-tagged away from (untagged, with its
# label) and, after --rebuild-base, the build cache on the old base. It never prunes.
set -Eeuo pipefail

usage() {
  cat <<'EOF'
usage: scripts/build_images.sh [--bundle DIR] [--only sensor|inference] [--rebuild-base] [--help]

Build the edgefleet module images offline (no registry): a debootstrapped Debian base image,
a wheelhouse of Python wheels, then the sensor and inference images.

  --bundle DIR      model bundle to bake into the inference image (default out/demo/bundle;
                    anywhere on disk: it is copied into the build context)
  --only MODULE     build only this module's image: sensor or inference
  --rebuild-base    debootstrap and import the base image again even if it exists
                    (picks up Debian security updates)
  -h, --help        show this help

Environment: PYTHON (a CPython 3.11 on Linux x86_64 for pip; default .venv/bin/python, else
python3), DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
(default http://deb.debian.org/debian-security).
Needs a running Docker engine; building the base image needs root and a Debian mirror,
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

# -- options ------------------------------------------------------------------------------------
BUNDLE=out/demo/bundle
ONLY=""
REBUILD_BASE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle)
      [[ $# -ge 2 ]] || die "--bundle needs a directory"
      BUNDLE=$2
      shift 2
      ;;
    --bundle=*) BUNDLE=${1#*=}; shift ;;
    --only)
      [[ $# -ge 2 ]] || die "--only needs sensor or inference"
      ONLY=$2
      shift 2
      ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$ONLY" in
  "") MODULES=(sensor inference) ;;
  sensor | inference) MODULES=("$ONLY") ;;
  *) die "--only takes sensor or inference, not '$ONLY'" ;;
esac

# -- layout ---------------------------------------------------------------------------------------
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[[ "$ROOT" != *[[:space:]]* ]] || die "the repository path '$ROOT' contains whitespace; move it"
if [[ -n $BUNDLE && $BUNDLE != /* ]]; then BUNDLE="$ROOT/$BUNDLE"; fi

CACHE_REL=.cache/images               # relative to the build context (the repository root)
CACHE="$ROOT/$CACHE_REL"
ROOTFS="$CACHE/rootfs-bookworm"
WHEELHOUSE_REL="$CACHE_REL/wheelhouse"
WH="$ROOT/$WHEELHOUSE_REL"
CONTEXT_REL="$CACHE_REL/context"
LOGS="$CACHE/logs"

BASE_IMAGE=edgefleet/python-base:bookworm
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# libstdc++6 (onnxruntime, scikit-learn) comes with apt anyway; named so it stays if apt goes.
BASE_PACKAGES=python3,python3-venv,ca-certificates,libstdc++6
LABEL_BY=org.edgefleet.built-by=scripts/build_images.sh
REPLACED=()      # image ids this run re-tagged away from (removed at the end when dangling and ours)
SUMMARY=()       # "image|tags|seconds" per built image
STEPS=()         # "step|seconds"

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
if [[ " ${MODULES[*]} " == *" inference "* ]]; then
  [[ -f "$BUNDLE/manifest.json" ]] ||
    die "no model bundle at $BUNDLE (no manifest.json): pass --bundle DIR with a bundle from 'edgefleet train --out DIR' (or run 'make demo' for out/demo/bundle)"
  BUNDLE_VERSION=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle_version"])' "$BUNDLE/manifest.json") ||
    die "$BUNDLE/manifest.json has no bundle_version"
  [[ $BUNDLE_VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "bundle_version '$BUNDLE_VERSION' is not a valid image tag"
fi

mkdir -p "$CACHE" "$LOGS"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another build_images.sh is running on this checkout (lock: $CACHE/.lock)"

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
CANDIDATE=""     # image tag built but not checked yet: never left behind
cleanup_on_exit() {
  [[ -d "$ROOTFS.tmp" ]] && unmount_under "$ROOTFS.tmp"
  if [[ -n $CANDIDATE ]]; then docker image rm "$CANDIDATE" >/dev/null 2>&1 || true; fi
  return 0
}
trap cleanup_on_exit EXIT

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
note_replaced() { # $1 old id (maybe empty), $2 tag now pointing elsewhere
  local new
  new=$(image_id "$2")
  if [[ -n $1 && $1 != "$new" ]]; then REPLACED+=("$1"); fi
}

# -- 1. base image ----------------------------------------------------------------------------------
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
  log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR into $ROOTFS (a few minutes; log: $LOGS/debootstrap.log)"
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
  rm -f "$CACHE/rootfs-bookworm.complete"
  mv "$tmp" "$ROOTFS"
  date -u +%FT%TZ >"$CACHE/rootfs-bookworm.complete"
}

ensure_base_image() {
  if [[ $REBUILD_BASE -eq 0 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE exists; kept (--rebuild-base makes it again)"
    return 0
  fi
  if [[ $REBUILD_BASE -eq 1 || ! -f "$CACHE/rootfs-bookworm.complete" ]]; then
    [[ $(id -u) -eq 0 ]] ||
      die "building the base image needs root (debootstrap chroots and creates device nodes): rerun as root, e.g. 'sudo scripts/build_images.sh'; afterwards the image is cached and root is no longer needed"
    if ! command -v debootstrap >/dev/null 2>&1; then
      command -v apt-get >/dev/null || die "debootstrap is not installed and there is no apt-get to install it"
      log "installing debootstrap with apt-get"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >"$LOGS/apt.log" 2>&1 ||
        die "apt-get install debootstrap failed (log: $LOGS/apt.log)"
    fi
    build_rootfs
  else
    log "reusing the rootfs debootstrapped on $(cat "$CACHE/rootfs-bookworm.complete") in $ROOTFS"
  fi
  [[ $(id -u) -eq 0 ]] || die "reading the rootfs (root-owned files) needs root: rerun as root"
  log "importing $ROOTFS as $BASE_IMAGE"
  local old
  old=$(image_id "$BASE_IMAGE")
  tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $LABEL_BY" \
    --change "LABEL org.edgefleet.debian-snapshot=$(cat "$CACHE/rootfs-bookworm.complete")" \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE" \
    - "$BASE_IMAGE" >/dev/null
  note_replaced "$old" "$BASE_IMAGE"
  docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c 'import ensurepip, ssl, venv' ||
    die "the base image's python3 lacks venv/ensurepip/ssl"
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

build_wheelhouse() {
  mkdir -p "$WH/deps" "$WH/app" "$CACHE/build-deps"
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
  local req="${PROJECT}[edge] @ file://$WH/app/$app_name"

  # c) the edge extra's dependencies as wheels (sdists such as paho-mqtt 1.6 are built here, on the
  #    host, so the image needs no compiler), pinned to .venv's versions when there is a .venv
  local constraints="$CACHE/constraints.txt"
  if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' >"$constraints" || true
    log "wheelhouse: pinned to the versions installed in .venv ($(wc -l <"$constraints") packages)"
  else
    : >"$constraints"
    log "wheelhouse: no .venv, so the newest versions pyproject.toml allows"
  fi
  if pip_ --isolated wheel --no-index --find-links "$WH/deps" --wheel-dir "$WH/deps" --constraint "$constraints" \
    "$req" >"$LOGS/wheelhouse.log" 2>&1; then
    log "wheelhouse: every wheel was cached"
  else
    log "wheelhouse: fetching missing wheels from PyPI"
    pip_ wheel --find-links "$WH/deps" --wheel-dir "$WH/deps" --constraint "$constraints" "$req" \
      >"$LOGS/wheelhouse.log" 2>&1 ||
      { tail -n 30 "$LOGS/wheelhouse.log" >&2; die "pip could not fetch/build the wheels (log: $LOGS/wheelhouse.log)"; }
  fi
  rm -f "$WH"/deps/"$PROJECT"-*.whl

  # d) lock: resolve offline against the wheelhouse alone, write deps/requirements.txt, drop stale wheels
  pip_ --isolated install --quiet --dry-run --ignore-installed --no-index --find-links "$WH/deps" \
    --constraint "$constraints" --report "$CACHE/resolve.json" "$req" >"$LOGS/resolve.log" 2>&1 ||
    { tail -n 30 "$LOGS/resolve.log" >&2; die "the wheelhouse does not resolve offline (log: $LOGS/resolve.log)"; }
  local stale
  stale=$("$PYTHON" scripts/images/lock_wheelhouse.py "$CACHE/resolve.json" "$WH/deps" "$PROJECT")
  if [[ -n $stale ]]; then
    log "wheelhouse: removing $(wc -l <<<"$stale") wheel(s) nothing needs any more"
    while read -r w; do rm -f -- "$WH/deps/$w"; done <<<"$stale"
  fi
  log "wheelhouse: $(grep -vc '^#' "$WH/deps/requirements.txt") packages, $(du -sh "$WH" | cut -f1) ($app_name)"
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

check_image() { # $1 image, rest: check_image.py arguments
  local image=$1
  shift
  docker run --rm -i --network none --entrypoint python "$image" - "$@" <scripts/images/check_image.py ||
    die "the new image ($image) failed its checks (above); the previous images keep their tags"
  local uid
  uid=$(docker run --rm --network none --entrypoint id "$image" -u)
  [[ $uid == 10001 ]] || die "$image runs as uid $uid, not 10001"
  echo "runs as uid $uid"
}

build_module_image() { # $1 module
  local m=$1 started tags=() args=()
  started=$(now_us)
  tags=("edgefleet-$m:$VERSION")
  args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WHEELHOUSE=$WHEELHOUSE_REL"
    --label "$LABEL_BY" --label "org.opencontainers.image.revision=$REVISION")
  if [[ $m == inference ]]; then
    stage_bundle
    tags+=("edgefleet-$m:$BUNDLE_VERSION")
    args+=(--build-arg "BUNDLE=$CONTEXT_REL/bundle" --label "org.edgefleet.bundle-version=$BUNDLE_VERSION")
  fi
  # Built under a candidate tag and checked; only then does it get the real tags, so a failed
  # build or check leaves the previous images where they were. A candidate tag left by a run that
  # was killed (its process is gone) is dropped here.
  local stale
  while read -r stale; do
    if [[ $stale =~ :unchecked-([0-9]+)$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
      docker image rm "$stale" >/dev/null 2>&1 || true
    fi
  done < <(docker images --format '{{.Repository}}:{{.Tag}}' "edgefleet-$m")
  CANDIDATE="edgefleet-$m:unchecked-$$"
  log "docker build --network none -f modules/$m/Dockerfile ${args[*]} -t $CANDIDATE ."
  # --network none: RUN steps cannot reach any index, so the build is offline by construction
  if ! docker build --force-rm --network none -f "modules/$m/Dockerfile" "${args[@]}" -t "$CANDIDATE" . 2>&1 |
    tee "$LOGS/build-$m.log"; then
    die "docker build of edgefleet-$m failed (log: $LOGS/build-$m.log)"
  fi

  log "checking $CANDIDATE"
  if [[ $m == inference ]]; then
    check_image "$CANDIDATE" --forbid pyspark,mlflow,pandas \
      --import modules.inference.service,onnxruntime,sklearn --bundle /app/bundle
  else
    check_image "$CANDIDATE" --forbid pyspark,mlflow,pandas --import modules.sensor.service
  fi
  local t old
  for t in "${tags[@]}"; do
    old=$(image_id "$t")
    docker tag "$CANDIDATE" "$t"
    note_replaced "$old" "$t"
  done
  docker image rm "$CANDIDATE" >/dev/null # the tag only: the image keeps its real tags
  CANDIDATE=""
  log "tagged ${tags[*]}"
  SUMMARY+=("${tags[0]}|${tags[*]}|$(seconds_since "$started")")
}

# The classic builder keeps every stage's layers as untagged images (its cache). Those built on a
# replaced image (the old base, after --rebuild-base) can never be used again: remove them.
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
  local i id
  for ((i = ${#REPLACED[@]} - 1; i >= 0; i--)); do
    id=${REPLACED[$i]}
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

# -- run -----------------------------------------------------------------------------------------------
TOTAL_START=$(now_us)
t=$(now_us); ensure_base_image; STEPS+=("base image|$(seconds_since "$t")")
t=$(now_us); build_wheelhouse; STEPS+=("wheelhouse|$(seconds_since "$t")")
for m in "${MODULES[@]}"; do
  t=$(now_us); build_module_image "$m"; STEPS+=("image $m|$(seconds_since "$t")")
done
remove_replaced

echo
echo "== build_images summary ($PROJECT $VERSION, revision $REVISION) =="
printf '%-44s %10s %10s\n' IMAGE SIZE BUILD_S
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r image tags secs <<<"$row"
  size=$(docker image inspect -f '{{.Size}}' "$image")
  printf '%-44s %7.1f MB %10s\n' "$image" "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" "$secs"
  for tag in $tags; do [[ $tag == "$image" ]] || printf '  also tagged %s\n' "$tag"; done
done
size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
printf '%-44s %7.1f MB %10s\n' "$BASE_IMAGE (base)" "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" -
echo
for row in "${STEPS[@]}"; do
  IFS='|' read -r step secs <<<"$row"
  printf '%-20s %8s s\n' "$step" "$secs"
done
printf '%-20s %8s s\n' total "$(seconds_since "$TOTAL_START")"
