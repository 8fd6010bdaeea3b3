"""Build all of edgefleet's container images on a machine with no container registry.

  1. base images  a minimal Debian bookworm, debootstrapped and `docker import`ed in flavours
                  (base.py): plain, + Mosquitto, + Java 17
  2. wheelhouse   the edgefleet wheel, a pool of dependency wheels, one pinned directory per image
                  extra (wheelhouse.py)
  3. images       built offline, checked, and only then tagged (build.py, checks.py; the table of
                  images and their checks is catalog.py)

Caches live in .cache/images/ (git-ignored); a second run rebuilds only what changed. The build
removes only images it made itself: a previous build it re-tagged away from (untagged, with its
label) and, after --rebuild-base, the build cache on the old bases. It never prunes.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from scripts.images.base import BaseImages
from scripts.images.build import ImageBuilder, remove_candidates
from scripts.images.catalog import IMAGES, Flavour, Image, flavour
from scripts.images.common import (
    BuildError,
    Layout,
    Timings,
    echo,
    log,
    output,
    stop_all,
    stopping,
    unmount_under,
    which,
)
from scripts.images.docker import Replaced, remove_replaced
from scripts.images.settings import Settings
from scripts.images.summary import print_summary
from scripts.images.wheelhouse import build_wheelhouse

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
NAMES = [i.name for i in IMAGES]

DESCRIPTION = f"""\
Build edgefleet's images offline (no registry): debootstrapped Debian base images, a wheelhouse
of Python wheels, then the images (default: all of them):
  sensor, inference   the IoT Edge modules (modules/<m>/Dockerfile)
  edgehub             the offline edgeHub stand-in, with Mosquitto (deployment/images/edgehub)
  sink                the local IoT Hub: Mosquitto + the parquet lake writer (deployment/images/sink)
  simulator           the device simulator (deployment/images/simulator)
  dashboard           the live fleet dashboard, Bokeh (deployment/images/dashboard)
  training            Spark + MLflow training and retraining, with Java 17 (deployment/images/training)
(images: {", ".join(NAMES)})"""

EPILOG = """\
Environment: PYTHON (a CPython 3.11 on Linux x86_64 for pip; default .venv/bin/python, else
python3), DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
(default http://deb.debian.org/debian-security).
Needs a running Docker engine; building the base images needs root and a Debian mirror,
the wheelhouse needs PyPI for wheels not cached yet."""

# The wheels must fit the image's Python (Debian bookworm: 3.11).
PYTHON_CHECK = """import platform, sys
import pip  # noqa: F401
ok = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
sys.exit(0 if ok and sys.platform == "linux" and platform.machine() == "x86_64" else 1)"""


def main(argv: Sequence[str] | None = None) -> int:
    """Build the images the command line asks for; return the exit code."""
    args = parse_arguments(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        settings = prepare(args, dict(os.environ))
        with build_lock(settings.layout):
            build_everything(settings)
    except BuildError as err:
        echo(f"build_images: error: {err}", err=True)
        return 1
    except KeyboardInterrupt:
        echo("build_images: interrupted", err=True)
        return 130
    return 0


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line (the flags of scripts/build_images.sh)."""
    parser = argparse.ArgumentParser(
        prog="scripts/build_images.sh",
        allow_abbrev=False,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bundle",
        default="out/demo/bundle",
        metavar="DIR",
        help="model bundle to bake into the inference image (default out/demo/bundle; anywhere on disk: "
        "it is copied into the build context)",
    )
    parser.add_argument("--only", default="", metavar="IMAGES", help="build only these images (comma-separated)")
    parser.add_argument("--skip", default="", metavar="IMAGES", help="build all images but these (comma-separated)")
    parser.add_argument(
        "--rebuild-base",
        action="store_true",
        help="debootstrap and import the base images again even if they exist (picks up Debian security updates)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        help="docker builds at a time: 1, or 2 (the default with two cores or more: training builds alongside)",
    )
    return parser.parse_args(argv)


def select_images(only: str, skip: str) -> tuple[Image, ...]:
    """The images --only/--skip leave, in catalog order."""
    wanted, unwanted = [n for n in only.split(",") if n], [n for n in skip.split(",") if n]
    for option, names in (("--only", wanted), ("--skip", unwanted)):
        for name in names:
            if name not in NAMES:
                raise BuildError(f"{option}: unknown image '{name}' (images: {' '.join(NAMES)})")
    images = tuple(i for i in IMAGES if (not wanted or i.name in wanted) and i.name not in unwanted)
    if not images:
        raise BuildError("--only/--skip leave no image to build")
    return images


def prepare(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Check the engine and the pip interpreter, and read the project, revision and bundle: the settings."""
    images = select_images(args.only, args.skip)
    if any(c.isspace() for c in str(ROOT)):
        raise BuildError(f"the repository path '{ROOT}' contains whitespace; move it")
    os.chdir(ROOT)
    check_engine()
    python = pip_python(environ)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bundle = ROOT / args.bundle  # an absolute --bundle stays as it is
    return Settings(
        layout=Layout(ROOT),
        images=images,
        bundle=bundle,
        rebuild_base=args.rebuild_base,
        jobs=args.jobs or (2 if (os.cpu_count() or 1) >= 2 else 1),
        python=python,
        mirror=environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"),
        security_mirror=environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"),
        project=pyproject["name"],
        version=pyproject["version"],
        revision=git_revision(),
        bundle_version=bundle_version(bundle) if any(i.bakes_bundle for i in images) else "",
    )


def check_engine() -> None:
    """Fail unless a Docker engine on x86_64 answers."""
    if not which("docker"):
        raise BuildError("docker is not installed")
    code, arch = output(["docker", "info", "-f", "{{.Architecture}}"])
    if code != 0:
        raise BuildError("cannot reach the Docker engine ('docker info' fails); start it or check permissions")
    if arch.strip() != "x86_64":
        raise BuildError(f"the engine runs on {arch.strip()}; the wheelhouse is for linux x86_64 (manylinux) only")


def pip_python(environ: dict[str, str]) -> str:
    """The interpreter pip runs with for the wheelhouse: PYTHON, else .venv/bin/python, else python3."""
    venv = ROOT / ".venv/bin/python"
    python = environ.get("PYTHON") or (str(venv) if os.access(venv, os.X_OK) else "python3")
    if output([python, "-c", PYTHON_CHECK])[0] != 0:
        raise BuildError(
            f"PYTHON={python} must be CPython 3.11 on Linux x86_64 with pip: the wheels must fit the image's "
            "Python (Debian bookworm: 3.11)"
        )
    return python


def git_revision() -> str:
    """The checkout's short commit, "-dirty" when tracked files changed; "unknown" outside git."""
    code, head = output(["git", "rev-parse", "--short=12", "HEAD"])
    if code != 0:
        return "unknown"
    _, changes = output(["git", "status", "--porcelain", "--untracked-files=no"])
    return head.strip() + ("-dirty" if changes.strip() else "")


def bundle_version(bundle: Path) -> str:
    """The bundle's version from its manifest: the inference image's second tag."""
    import json
    import re

    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        raise BuildError(
            f"no model bundle at {bundle} (no manifest.json): pass --bundle DIR with a bundle from 'edgefleet "
            "train --out DIR' (or run 'make demo' for out/demo/bundle), or leave the inference image out "
            "(--skip inference)"
        )
    version = json.loads(manifest.read_text()).get("bundle_version")
    if not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", version):
        raise BuildError(f"bundle_version '{version}' in {manifest} is not a valid image tag")
    return version


@contextmanager
def build_lock(layout: Layout) -> Iterator[None]:
    """Hold the checkout's build lock; fail when another build holds it."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    with (layout.cache / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(
                f"another build_images is running on this checkout (lock: {layout.cache / '.lock'})"
            ) from None
        yield


class Lane(threading.Thread):
    """A step running beside the main one; its failure is reported when it is joined."""

    def __init__(self, name: str, step: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.step = step
        self.failed = False

    def run(self) -> None:
        try:
            self.step()
        except BuildError as err:
            self.failed = True
            if not stopping():  # once the run stops, this lane's failure is only an echo of that
                echo(f"build_images: error: {err}", err=True)
        except BaseException:
            self.failed = True
            raise

    def join_or_raise(self) -> None:
        self.join()
        if self.failed:
            raise BuildError(f"{self.name} failed (above)")


def build_everything(settings: Settings) -> None:
    """Base images and wheelhouse side by side, then the images in one or two lanes, then the summary."""
    started = time.monotonic()
    timings, replaced = Timings(), Replaced()
    bases = BaseImages(settings, timings, replaced)
    builder = ImageBuilder(settings, bases, timings, replaced)
    lane_a, lane_b = split_lanes(settings)
    early, late = split_flavours(settings, lane_a, lane_b)
    log(
        f"images: {' '.join(i.name for i in settings.images)} (base flavours: "
        f"{' '.join(f.name for f in settings.flavours)}; wheelhouse extras: {' '.join(settings.extras)}; "
        f"{settings.jobs} build(s) at a time)"
    )
    try:
        # The base images (Debian's mirror) and the wheelhouse (PyPI) are independent: made side by side.
        wheelhouse = Lane("making the wheelhouse", lambda: build_wheelhouse(settings, timings))
        wheelhouse.start()
        bases.ensure(early)
        wheelhouse.join_or_raise()
        if lane_a:

            def late_bases_then_lane_a() -> None:
                bases.ensure(late)
                builder.build_lane(lane_a, lambda: False)

            other = Lane(f"lane A ({' '.join(f.name for f in late)} base, training)", late_bases_then_lane_a)
            other.start()
            builder.build_lane(lane_b, other.is_alive)
            other.join_or_raise()
        else:
            builder.build_lane(lane_b, lambda: False)
        remove_replaced(replaced)
    finally:
        clean_up(settings.layout)
    print_summary(settings, builder.built, timings, time.monotonic() - started)


def split_lanes(settings: Settings) -> tuple[list[Image], list[Image]]:
    """With two jobs, lane A builds training (the longest build), lane B the others in order.

    Sensor and inference stay in one lane, in order, so inference reuses the layers sensor made.
    """
    images = list(settings.images)
    if settings.jobs == 2 and len(images) > 1 and any(i.training_run for i in images):
        return [i for i in images if i.training_run], [i for i in images if not i.training_run]
    return [], images


def split_flavours(settings: Settings, lane_a: list[Image], lane_b: list[Image]) -> tuple[list[Flavour], list[Flavour]]:
    """Early: made before any image builds; late: made by lane A (lane B's first image need not wait)."""
    if not lane_a:
        return list(settings.flavours), []
    first = flavour(lane_b[0].flavour)
    return [first], [f for f in settings.flavours if f != first]


def clean_up(layout: Layout) -> None:
    """Stop what still runs, unmount half-made rootfs copies, drop this run's unchecked candidate tags."""
    stop_all()
    for tmp in layout.cache.glob("rootfs-*.tmp"):
        unmount_under(tmp)
    remove_candidates("edgefleet-*", only_dead=False)


if __name__ == "__main__":
    sys.exit(main())
