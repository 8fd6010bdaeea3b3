"""The base images: a minimal Debian bookworm (debootstrap --variant=minbase + python3), `docker import`ed in flavours.

The rootfs is cached in .cache/images/rootfs-bookworm (marked complete with the date it was made);
a flavour is a copy with its packages installed in a chroot and slimmed, cached beside it. A base
image is kept while it exists and its snapshot label matches the cached rootfs (--rebuild-base
makes them all again). Needs root and a Debian mirror only when something must be made.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.images.catalog import BUILT_BY, FLAVOURS, Flavour
from scripts.images.common import (
    BuildError,
    Timings,
    log,
    need_root,
    pipe,
    remove_tree,
    run,
    tail,
    unmount_under,
    which,
)
from scripts.images.docker import Replaced, image_id, inspect
from scripts.images.settings import Settings

__all__ = ["BASE_PACKAGES", "SUITE", "BaseImages", "slim_rootfs"]

SUITE = "bookworm"
# libstdc++6 (onnxruntime, scikit-learn) comes with apt anyway; named so it stays if apt goes.
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates", "libstdc++6")
SNAPSHOT_LABEL = "org.edgefleet.debian-snapshot"

# Packages installed later (apt-get in a derived Dockerfile) stay slim too, as in Debian's slim images.
DPKG_SLIM = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
APT_SLIM = """APT::Install-Recommends "false";
APT::Install-Suggests "false";
"""


class BaseImages:
    """Makes the base flavours an image build needs, each at most once, and says when each is ready."""

    def __init__(self, settings: Settings, timings: Timings, replaced: Replaced) -> None:
        self.settings = settings
        self.layout = settings.layout
        self.timings = timings
        self.replaced = replaced
        self.ready = {f.name: threading.Event() for f in FLAVOURS}
        self._rootfs_lock = threading.Lock()
        self._rootfs_checked = False

    @property
    def complete_marker(self) -> Path:
        return self.layout.rootfs.with_name(self.layout.rootfs.name + ".complete")

    def snapshot(self) -> str:
        """The date the cached rootfs was made, or "" when there is none."""
        marker = self.complete_marker
        return marker.read_text().strip() if marker.is_file() else ""

    def ensure(self, flavours: Sequence[Flavour]) -> None:
        """Keep each flavour's image while it matches the cached rootfs, else import it (rootfs made first)."""
        missing = any(not image_id(f.image) for f in flavours)
        if self.settings.rebuild_base or missing:
            self.ensure_rootfs()
        snapshot = self.snapshot()
        for flavour in flavours:
            label = inspect(flavour.image, f'{{{{index .Config.Labels "{SNAPSHOT_LABEL}"}}}}')
            if not self.settings.rebuild_base and label and (not snapshot or label == snapshot):
                log(f"base image {flavour.image} exists ({label}); kept (--rebuild-base makes it again)")
            else:
                need_root("importing the base images")
                if not self.complete_marker.is_file():
                    self.ensure_rootfs()
                started = time.monotonic()
                self.import_flavour(flavour)
                self.timings.record(f"base {flavour.image.removeprefix('edgefleet/')}", started)
            self.ready[flavour.name].set()

    def wait(self, flavour: str, producer_alive: Callable[[], bool]) -> None:
        """Wait until the flavour is ready (another lane may be making it)."""
        while not self.ready[flavour].wait(1):
            if not producer_alive() and not self.ready[flavour].is_set():
                raise BuildError(f"the base image of flavour {flavour} was not made (above)")

    # -- the rootfs ---------------------------------------------------------------------------------
    def ensure_rootfs(self) -> None:
        """Reuse the cached rootfs, or debootstrap it (installing debootstrap when needed)."""
        with self._rootfs_lock:
            if self._rootfs_checked:
                return
            self._rootfs_checked = True
            if not self.settings.rebuild_base and self.complete_marker.is_file():
                log(f"reusing the rootfs debootstrapped on {self.snapshot()} in {self.layout.rootfs}")
                return
            need_root("building the base images")
            if not which("debootstrap"):
                install_debootstrap(self.layout.logs / "apt.log")
            started = time.monotonic()
            self.build_rootfs()
            self.timings.record("base rootfs (debootstrap)", started)

    def build_rootfs(self) -> None:
        """Debootstrap into a temporary directory, update and slim it, then move it into place."""
        rootfs, settings = self.layout.rootfs, self.settings
        tmp, debootstrap_log = rootfs.with_name(rootfs.name + ".tmp"), self.layout.logs / "debootstrap.log"
        remove_tree(self.layout, tmp)
        packages = ",".join(BASE_PACKAGES)
        log(
            f"debootstrap {SUITE} (minbase + {packages}) from {settings.mirror} into {rootfs} "
            f"(a minute or more; log: {debootstrap_log})"
        )
        command = ["debootstrap", "--variant=minbase", f"--include={packages}", "--components=main"]
        if run([*command, SUITE, tmp, settings.mirror], log_to=debootstrap_log) != 0:
            tail(debootstrap_log, 25)
            unmount_under(tmp)
            raise BuildError(f"debootstrap failed (full log: {debootstrap_log})")
        unmount_under(tmp)
        self.update_rootfs(tmp, debootstrap_log)
        slim_rootfs(tmp)
        remove_tree(self.layout, rootfs)
        self.complete_marker.unlink(missing_ok=True)
        tmp.rename(rootfs)
        self.complete_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")

    def update_rootfs(self, rootfs: Path, log_file: Path) -> None:
        """Add bookworm-updates and -security (as Debian's own images have them) and apply them.

        debootstrap installs from the release suite only.
        """
        if not (rootfs / "etc/apt").is_dir():
            raise BuildError(f"{rootfs} does not look like a rootfs")
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
            f"Types: deb\nURIs: {self.settings.mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {self.settings.security_mirror}\nSuites: {SUITE}-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        log(f"applying {SUITE}-updates and {SUITE}-security")
        upgrade = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-qq", "-o", "Dpkg::Use-Pty=0", "upgrade"]
        if not chroot_all(rootfs, [["apt-get", "update", "-qq"], upgrade, ["apt-get", "-qq", "clean"]], log_file):
            tail(log_file, 25)
            raise BuildError(f"updating the rootfs failed (log: {log_file})")

    def build_flavour_rootfs(self, flavour: Flavour, dest: Path) -> None:
        """Copy the base rootfs, install the flavour's packages in a chroot (no service starts), slim it."""
        tmp, flavour_log = dest.with_name(dest.name + ".tmp"), self.layout.logs / f"flavour-{flavour.name}.log"
        packages = " ".join(flavour.packages)
        remove_tree(self.layout, tmp)
        log(f"base flavour {flavour.name}: installing {packages} into a copy of the rootfs (log: {flavour_log})")
        if run(["cp", "-a", self.layout.rootfs, tmp]) != 0:
            raise BuildError(f"cannot copy {self.layout.rootfs} to {tmp}")
        (tmp / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", tmp / "etc/resolv.conf")  # apt fetches through the host's resolver
        policy = tmp / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# no service starts in a chroot\nexit 101\n")
        policy.chmod(0o755)
        (tmp / "usr/share/man/man1").mkdir(parents=True, exist_ok=True)  # the JRE links man pages there
        run(["mount", "-t", "proc", "proc", tmp / "proc"])  # the JRE's postinst runs java (ca-certificates-java)
        install = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "-o", "Dpkg::Use-Pty=0"]
        steps = [["apt-get", "update", "-qq"], [*install, *flavour.packages], ["apt-get", "-qq", "clean"]]
        ok = chroot_all(tmp, steps, flavour_log)
        unmount_under(tmp)
        if not ok:
            tail(flavour_log, 25)
            raise BuildError(f"installing {packages} into the {flavour.name} flavour failed (log: {flavour_log})")
        policy.unlink()
        slim_rootfs(tmp)
        remove_tree(self.layout, dest)
        marker = dest.with_name(dest.name + ".complete")
        marker.unlink(missing_ok=True)
        tmp.rename(dest)
        shutil.copyfile(self.complete_marker, marker)

    # -- the images ---------------------------------------------------------------------------------
    def import_flavour(self, flavour: Flavour) -> None:
        """Import the flavour's rootfs (made first when stale) as its image, and check the image."""
        directory, packages = self.layout.rootfs, BASE_PACKAGES
        if flavour.name != "base":
            directory, packages = directory.with_name(f"{directory.name}-{flavour.name}"), packages + flavour.packages
            marker = directory.with_name(directory.name + ".complete")
            if not marker.is_file() or marker.read_text().strip() != self.snapshot():
                self.build_flavour_rootfs(flavour, directory)
        log(f"importing {directory} as {flavour.image}")
        old = image_id(flavour.image)
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL org.edgefleet.built-by={BUILT_BY}",
            f"LABEL {SNAPSHOT_LABEL}={self.snapshot()}",
            'CMD ["python3"]',
        ]
        message = f"debootstrap --variant=minbase --include={','.join(packages)} {SUITE}"
        command = ["docker", "import", *(arg for c in changes for arg in ("--change", c)), "--message", message]
        import_log = self.layout.logs / f"import-{flavour.name}.log"
        if not pipe(
            ["tar", "--numeric-owner", "-C", directory, "-c", "."], [*command, "-", flavour.image], log_to=import_log
        ):
            tail(import_log)
            raise BuildError(f"docker import of {flavour.image} failed (log: {import_log})")
        self.replaced.retag(old, flavour.image)
        check = 'python3 -c "import ensurepip, ssl, venv"' + (f" && {flavour.check}" if flavour.check else "")
        if run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", flavour.image, "-ec", check]) != 0:
            raise BuildError(f"the new {flavour.image} fails its check ({check})")


def chroot_all(rootfs: Path, commands: Sequence[Sequence[str]], log_file: Path) -> bool:
    """Run commands in the rootfs one after another, appending to log_file; stop at the first failure."""
    return all(run(["chroot", rootfs, *command], log_to=log_file, append=True) == 0 for command in commands)


def install_debootstrap(log_file: Path) -> None:
    """Install debootstrap with apt-get."""
    if not which("apt-get"):
        raise BuildError("debootstrap is not installed and there is no apt-get to install it")
    log("installing debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        if run(command, log_to=log_file, append=True, env=env) != 0:
            raise BuildError(f"apt-get install debootstrap failed (log: {log_file})")


def slim_rootfs(rootfs: Path) -> None:
    """Drop what a container never needs: apt lists and packages, docs (copyright stays), man pages, logs."""
    if not (rootfs / "usr").is_dir() or not (rootfs / "etc").is_dir():
        raise BuildError(f"{rootfs} does not look like a rootfs")
    removable = [
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "usr/share/lintian/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "etc/resolv.conf",  # the host's resolver and name: Docker provides its own at run time
        "etc/hostname",
    ]
    for pattern in removable:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    doc = rootfs / "usr/share/doc"
    run(["find", doc, "!", "-type", "d", "!", "-name", "copyright", "-delete"])
    run(["find", doc, "-mindepth", "1", "-depth", "-type", "d", "-empty", "-delete"])
    run(["find", rootfs / "var/log", "-type", "f", "-exec", "truncate", "-s", "0", "{}", "+"])
    (rootfs / "etc/resolv.conf").touch()
    (rootfs / "etc/hostname").touch()
    (rootfs / "etc/dpkg/dpkg.cfg.d/01-edgefleet-slim").write_text(DPKG_SLIM)
    (rootfs / "etc/apt/apt.conf.d/01-edgefleet-slim").write_text(APT_SLIM)
