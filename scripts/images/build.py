"""The images: built offline from a context of only their own files, checked, and only then tagged.

`docker build --network none` gets a tar on stdin holding the image's Dockerfile, its wheel
directory, the edgefleet wheel (and the bundle or template it bakes in), so no pyspark lands in the
sensor's upload. The build gets a candidate tag; an image identical to the one its tag names already
(every layer cached) passed its checks then; any other is checked, and only when it passes do its
tags move, so a failed build or check leaves the previous images where they were.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgefleet.broker_journal import JOURNAL_PLUGIN_FILE
from scripts.images.base import BaseImages
from scripts.images.catalog import BUILT_BY, Image, flavour
from scripts.images.checks import MISSING_FILES, check_image
from scripts.images.common import BuildError, Timings, echo, human_size, log, output, pipe, remove_tree, run, tail
from scripts.images.docker import Replaced, build_env, image_id
from scripts.images.settings import Settings

__all__ = ["Built", "ImageBuilder", "remove_candidates"]


@dataclass(frozen=True)
class Built:
    """One image this run built and tagged."""

    name: str
    tags: tuple[str, ...]
    build_s: float
    check: str  # seconds the checks took, or "same" (unchanged: checked when it was tagged)


class ImageBuilder:
    """Builds, checks and tags images; several lanes may use one builder side by side."""

    def __init__(self, settings: Settings, bases: BaseImages, timings: Timings, replaced: Replaced) -> None:
        self.settings = settings
        self.bases = bases
        self.timings = timings
        self.replaced = replaced
        self.built: dict[str, Built] = {}
        self._env = build_env()

    def build_lane(self, images: Iterable[Image], base_producer_alive: Callable[[], bool]) -> None:
        """Build images in order, each once its base flavour is ready."""
        for image in images:
            self.bases.wait(image.flavour, base_producer_alive)
            self.build(image)

    def build(self, image: Image) -> None:
        """Build one image under a candidate tag, check it unless unchanged, then move its tags to it."""
        started = time.monotonic()
        tags = [f"edgefleet-{image.name}:{self.settings.version}"]
        if image.journal:
            self.stage_journal()
        if image.bakes_bundle:
            self.stage_bundle()
            tags.append(f"edgefleet-{image.name}:{self.settings.bundle_version}")
        remove_candidates(f"edgefleet-{image.name}", only_dead=True)
        candidate = candidate_tag(image.name, os.getpid())
        self.docker_build(image, candidate)
        build_s = time.monotonic() - started
        checked = time.monotonic()
        if image_id(candidate) == image_id(tags[0]):
            log(f"[{image.name}] built in {build_s:.1f} s: unchanged, the image {tags[0]} is (checked when tagged)")
            check = "same"
        else:
            log(f"[{image.name}] built in {build_s:.1f} s; checking {candidate}")
            if not self.check(image, candidate, final=False):
                # A layer copy dropped files (the storage driver, not the image): build it afresh once.
                log(f"[{image.name}] files went missing while docker copied layers; rebuilding it without the cache")
                self.docker_build(image, candidate, no_cache=True)
                self.check(image, candidate, final=True)
            check = f"{time.monotonic() - checked:.1f}"
        for tag in tags:
            old = image_id(tag)
            run(["docker", "tag", candidate, tag])
            self.replaced.retag(old, tag)
        run(["docker", "image", "rm", candidate], quiet=True)  # the tag only: the image keeps its real tags
        log(f"[{image.name}] tagged {' '.join(tags)}")
        self.built[image.name] = Built(image.name, tuple(tags), build_s, check)
        self.timings.record(f"image {image.name}", started)

    def docker_build(self, image: Image, candidate: str, *, no_cache: bool = False) -> None:
        """Run the offline docker build of the image's own files (a tar on stdin) under the candidate tag."""
        layout = self.settings.layout
        build_log = layout.logs / f"build-{image.name}.log"
        args, files = self.build_arguments(image), self.context_files(image)
        size = output(["du", "-cshL", *files], cwd=layout.root)[1].splitlines()[-1:] or ["?"]
        log(
            f"[{image.name}] docker build --network none -f {image.dockerfile} {' '.join(args)} -t {candidate} - "
            f"(context {size[0].split()[0]}; log: {build_log})"
        )
        tar = ["tar", "-C", str(layout.root), "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf", "-"]
        # --network none: RUN steps cannot reach any index, so the build is offline by construction
        build = ["docker", "build", "--force-rm", "--network", "none", "-f", image.dockerfile, *args, "-t", candidate]
        if no_cache:
            build.insert(2, "--no-cache")
        if not pipe([*tar, *files], [*build, "-"], log_to=build_log, env=self._env):
            tail(build_log)
            raise BuildError(f"docker build of edgefleet-{image.name} failed (log: {build_log})")

    def build_arguments(self, image: Image) -> list[str]:
        """The image's --build-arg and --label arguments."""
        settings = self.settings
        args = ["--build-arg", f"BASE_IMAGE={flavour(image.flavour).image}"]
        args += ["--build-arg", f"WHEELHOUSE={settings.layout.wheelhouse_rel}"]
        if image.deployment_image:  # labelled in one step of their own (ARG REVISION, BUILT_BY)
            args += ["--build-arg", f"REVISION={settings.revision}", "--build-arg", f"BUILT_BY={BUILT_BY}"]
        else:
            args += ["--label", f"org.edgefleet.built-by={BUILT_BY}"]
            args += ["--label", f"org.opencontainers.image.revision={settings.revision}"]
        if image.journal:
            args += ["--build-arg", f"NATIVE={settings.layout.context_rel}/native"]
        if image.bakes_bundle:
            args += ["--build-arg", f"BUNDLE={settings.layout.context_rel}/bundle"]
            args += ["--label", f"org.edgefleet.bundle-version={settings.bundle_version}"]
        return args

    def context_files(self, image: Image) -> list[str]:
        """The build context: this image's files only, at their paths in the repository."""
        wheelhouse = self.settings.layout.wheelhouse_rel
        files = [image.dockerfile, f"{wheelhouse}/{image.extra}", f"{wheelhouse}/app", *image.context]
        if image.journal:
            files.append(f"{self.settings.layout.context_rel}/native")
        if image.bakes_bundle:
            files.append(f"{self.settings.layout.context_rel}/bundle")
        return files

    def check(self, image: Image, candidate: str, *, final: bool = True) -> bool:
        """Check the candidate; print what was checked, fail the build on the first failed check.

        Not `final`: return False instead when the only fault is files missing from installed
        packages, which a rebuild without the cache repairs.
        """
        check_log = self.settings.layout.logs / f"check-{image.name}.log"
        passed, lines = check_image(image, candidate)
        check_log.write_text("".join(f"{line}\n" for line in lines))
        echo("\n".join(f"  [{image.name}] {line}" for line in lines), err=not passed)
        if not passed and not final and lines and lines[-1] == MISSING_FILES:
            return False
        if not passed:
            raise BuildError(
                f"the new image edgefleet-{image.name} failed its checks (above; log: {check_log}); "
                "the previous images keep their tags"
            )
        return True

    def stage_journal(self) -> None:
        """Build Mosquitto's journal plugin into the build context (host and images are both Debian bookworm)."""
        layout = self.settings.layout
        plugin = layout.cache / "context" / "native" / JOURNAL_PLUGIN_FILE
        script = layout.root / "scripts" / "build_broker_journal.sh"
        if run(["bash", str(script), str(plugin)]) != 0:
            raise BuildError(
                f"cannot build {plugin} with {script}: it needs gcc, mosquitto-dev and libmosquitto-dev (make setup)"
            )
        plugin.chmod(0o755)

    def stage_bundle(self) -> None:
        """Copy the bundle into the build context's staging directory, world-readable (the module runs as 10001)."""
        settings = self.settings
        dest = settings.layout.cache / "context" / "bundle"
        if settings.bundle.resolve() == dest.resolve():
            log(f"bundle {settings.bundle_version} is already staged in {dest}")
            return
        remove_tree(settings.layout, dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if run(["cp", "-R", "--preserve=timestamps", settings.bundle, dest]) != 0:
            raise BuildError(f"cannot copy the bundle {settings.bundle} to {dest}")
        run(["chmod", "-R", "u=rwX,go=rX", dest])
        log(f"bundle {settings.bundle_version} staged from {settings.bundle} ({human_size(dest)})")


def candidate_tag(name: str, pid: int) -> str:
    """The tag an image is built under until it passes its checks."""
    return f"edgefleet-{name}:unchecked-{pid}"


def remove_candidates(reference: str, *, only_dead: bool) -> None:
    """Remove candidate tags: those of runs that were killed (only_dead), or this run's own."""
    code, listing = output(
        ["docker", "images", "--filter", f"reference={reference}", "--format", "{{.Repository}}:{{.Tag}}"]
    )
    for tag in listing.split() if code == 0 else []:
        match = re.search(r":unchecked-([0-9]+)$", tag)
        if not match:
            continue
        pid = int(match.group(1))
        if (only_dead and not process_alive(pid)) or (not only_dead and pid == os.getpid()):
            run(["docker", "image", "rm", tag], quiet=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
