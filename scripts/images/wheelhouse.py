"""The wheelhouse: the edgefleet wheel, a pool of dependency wheels, and per image extra its pinned wheels.

.cache/images/wheelhouse/ holds app/ (the edgefleet wheel built from this checkout), pool/ (every
dependency wheel, downloaded once; sdists built on the host) and per extra a directory of hard
links to just its wheels + requirements.txt with exact pins, resolved offline against the pool and
pinned to the versions in .venv when there is one (what the tests ran). PyPI is needed only for
wheels not in the pool yet.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.images.common import BuildError, Timings, human_size, log, output, remove_tree, run, tail
from scripts.images.lock_wheelhouse import LockError, lock_extra
from scripts.images.settings import Settings

__all__ = ["build_wheelhouse"]

# A fixed SOURCE_DATE_EPOCH makes the edgefleet wheel byte-identical while the code is, so Docker's cache holds.
SOURCE_DATE_EPOCH = "315532800"


def build_wheelhouse(settings: Settings, timings: Timings) -> None:
    """Make the wheelhouse for the selected images' extras (what is there already is kept)."""
    started = time.monotonic()
    layout = settings.layout
    for directory in (layout.pool, layout.wheelhouse / "app", layout.cache / "build-deps"):
        directory.mkdir(parents=True, exist_ok=True)
    migrate_old_layout(settings)
    cache_build_requirements(settings)
    app = f"file://{build_app_wheel(settings)}"
    constraints = write_constraints(settings)
    summaries = lock_extras(settings, app, constraints)
    if summaries is not None:
        log("wheelhouse: every wheel was in the pool")
    else:
        fetch_missing_wheels(settings, app, constraints)
        summaries = lock_extras(settings, app, constraints)
        if summaries is None:
            logs = sorted(layout.logs.glob("resolve-*.log"))
            for path in logs:
                tail(path, 10)
            raise BuildError(f"the wheelhouse does not resolve offline (logs: {layout.logs}/resolve-*.log)")
    for extra, summary in summaries.items():
        log(f"wheelhouse: {extra}: {summary}")
    remove_unused_pool_wheels(layout.pool)
    log(f"wheelhouse: {human_size(layout.pool)} in the pool ({Path(app).name})")
    timings.record("wheelhouse", started)


def migrate_old_layout(settings: Settings) -> None:
    """The layout before per-image directories: its resolve.json goes, its deps/ wheels join the pool."""
    layout = settings.layout
    (layout.cache / "resolve.json").unlink(missing_ok=True)
    deps = layout.wheelhouse / "deps"
    if deps.is_dir():
        for wheel in deps.glob("*.whl"):
            if not (layout.pool / wheel.name).exists():
                wheel.rename(layout.pool / wheel.name)
        shutil.rmtree(deps)


def cache_build_requirements(settings: Settings) -> None:
    """Cache what pyproject.toml's [build-system] needs, so the project wheel builds offline."""
    build_deps = str(settings.layout.cache / "build-deps")
    pyproject = tomllib.loads((settings.layout.root / "pyproject.toml").read_text())
    requirements: list[str] = [*pyproject["build-system"]["requires"], "wheel"]
    offline = [*settings.pip(), "--isolated", "download", "--quiet", "--no-index", "--find-links", build_deps]
    if run([*offline, "--dest", build_deps, *requirements], quiet=True) == 0:
        return
    log(f"downloading the build requirements ({' '.join(requirements)})")
    if run([*settings.pip(), "download", "--quiet", "--dest", build_deps, *requirements]) != 0:
        raise BuildError(f"cannot download {' '.join(requirements)} from PyPI")


def build_app_wheel(settings: Settings) -> Path:
    """Build the edgefleet wheel from a clean copy of the checkout; return its path in app/.

    A clean copy: an in-tree build/ could carry stale files. The wheel in app/ is replaced only when
    its bytes differ.
    """
    layout = settings.layout
    source, out, app_dir = layout.cache / "src", layout.cache / "app.tmp", layout.wheelhouse / "app"
    remove_tree(layout, source)
    remove_tree(layout, out)
    out.mkdir(parents=True)
    copy_sources(layout.root, source)
    wheel_log = layout.logs / "wheel-app.log"
    command = [*settings.pip(), "--isolated", "wheel", "--quiet", "--no-deps", "--no-index"]
    command += ["--find-links", str(layout.cache / "build-deps"), "--wheel-dir", str(out), str(source)]
    if run(command, log_to=wheel_log, env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}) != 0:
        tail(wheel_log)
        raise BuildError(f"building the {settings.project} wheel failed (log: {wheel_log})")
    wheels = list(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {out}, found: {[w.name for w in wheels]}")
    target = app_dir / wheels[0].name
    if not (target.is_file() and filecmp.cmp(wheels[0], target, shallow=False)):
        for old in app_dir.glob("*.whl"):
            old.unlink()
        wheels[0].rename(target)
    remove_tree(layout, out)
    remove_tree(layout, source)
    return target


def source_files(root: Path) -> list[str]:
    """Source files of the checkout: tracked and untracked-but-not-ignored (what a commit would hold)."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--deduplicate"]
    code, listing = output([*command, "--", ".", ":(exclude).cache"], cwd=root)
    if code == 0:
        return [name for name in listing.split("\0") if name and os.path.lexists(root / name)]
    skipped_dirs = {".git", ".venv", ".cache", "out", "build", "__pycache__"}
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skipped_dirs and not d.endswith(".egg-info")]
        found += [os.path.relpath(Path(directory) / f, root) for f in files]
    return found


def copy_sources(root: Path, dest: Path) -> None:
    """Copy the checkout's source files into dest (symlinks as symlinks, modes and times kept)."""
    for name in source_files(root):
        source, target = root / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)


def write_constraints(settings: Settings) -> Path:
    """Pin to the versions installed in .venv when there is one (what the tests ran); else no pins."""
    constraints = settings.layout.cache / "constraints.txt"
    venv_python = settings.layout.root / ".venv/bin/python"
    if venv_python.is_file() and os.access(venv_python, os.X_OK):
        code, frozen = output([venv_python, "-m", "pip", "freeze", "--exclude-editable"])
        pins = [line for line in frozen.splitlines() if is_pin(line)] if code == 0 else []
        constraints.write_text("".join(f"{p}\n" for p in pins))
        log(f"wheelhouse: pinned to the versions installed in .venv ({len(pins)} packages)")
    else:
        constraints.write_text("")
        log("wheelhouse: no .venv, so the newest versions pyproject.toml allows")
    return constraints


def is_pin(line: str) -> bool:
    """Whether a `pip freeze` line is `name==version` (not a URL or editable)."""
    name, sep, _ = line.partition("==")
    return bool(sep) and bool(name) and name[0].isalnum() and all(c.isalnum() or c in "._-" for c in name)


def lock_extras(settings: Settings, app: str, constraints: Path) -> dict[str, str] | None:
    """Resolve each extra offline against the pool (side by side) and write its directory.

    Returns each extra's summary, or None when the pool lacks a wheel.
    """
    with ThreadPoolExecutor(max_workers=len(settings.extras)) as pool:
        summaries = pool.map(lambda extra: lock_one(settings, app, constraints, extra), settings.extras)
        results = dict(zip(settings.extras, summaries, strict=True))
    if any(summary is None for summary in results.values()):
        return None
    return {extra: summary for extra, summary in results.items() if summary is not None}


def lock_one(settings: Settings, app: str, constraints: Path, extra: str) -> str | None:
    """Resolve one extra offline and write its wheel directory; None when it does not resolve."""
    layout = settings.layout
    report, resolve_log = layout.cache / f"resolve-{extra}.json", layout.logs / f"resolve-{extra}.log"
    command = [*settings.pip(), "--isolated", "install", "--quiet", "--dry-run", "--ignore-installed", "--no-index"]
    command += ["--find-links", str(layout.pool), "--constraint", str(constraints), "--report", str(report)]
    if run([*command, f"{settings.project}[{extra}] @ {app}"], log_to=resolve_log) != 0:
        return None
    try:
        return lock_extra(report, layout.pool, layout.wheelhouse / extra, settings.project, extra)
    except LockError as err:
        with resolve_log.open("a") as sink:
            sink.write(f"lock_wheelhouse: {err}\n")
        return None


def fetch_missing_wheels(settings: Settings, app: str, constraints: Path) -> None:
    """Fetch every needed extra's wheels at once; sdists (paho-mqtt 1.6, pyspark) are built on the host."""
    layout = settings.layout
    wheelhouse_log = layout.logs / "wheelhouse.log"
    log(f"wheelhouse: fetching missing wheels for {' '.join(settings.extras)} from PyPI (log: {wheelhouse_log})")
    everything = f"{settings.project}[{','.join(settings.extras)}] @ {app}"
    command = [*settings.pip(), "wheel", "--find-links", str(layout.pool), "--wheel-dir", str(layout.pool)]
    if run([*command, "--constraint", str(constraints), everything], log_to=wheelhouse_log) != 0:
        tail(wheelhouse_log)
        raise BuildError(f"pip could not fetch/build the wheels (log: {wheelhouse_log})")
    for own in layout.pool.glob(f"{settings.project}-*.whl"):
        own.unlink()


def remove_unused_pool_wheels(pool: Path) -> None:
    """Remove pool wheels no image directory links to any more (older pins)."""
    stale = [wheel for wheel in pool.glob("*.whl") if wheel.stat().st_nlink == 1]
    if stale:
        log(f"wheelhouse: removing {len(stale)} wheel(s) nothing needs any more")
        for wheel in stale:
            wheel.unlink()
