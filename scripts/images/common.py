"""What every step shares: the log, the error, subprocesses (stopped when a run ends early), paths, timings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "BuildError",
    "Layout",
    "Timings",
    "echo",
    "human_size",
    "log",
    "mounts_under",
    "need_root",
    "output",
    "pipe",
    "remove_tree",
    "run",
    "stop_all",
    "stopping",
    "succeeds",
    "tail",
    "unmount_under",
    "which",
]

_print_lock = threading.Lock()


def log(message: str) -> None:
    """Print one line of progress, prefixed like every line of this build."""
    echo(f"build_images: {message}")


def echo(text: str, *, err: bool = False) -> None:
    """Print text whole (lanes print side by side)."""
    with _print_lock:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


class BuildError(Exception):
    """A step failed; the message says what failed and where its log is."""


# -- subprocesses --------------------------------------------------------------------------------------
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()

Command = Sequence[str | os.PathLike[str]]
Sink = IO[bytes] | int | None


def _start(
    cmd: Command,
    *,
    stdin: IO[bytes] | int | None = None,
    stdout: Sink = None,
    stderr: Sink = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    with _live_lock:
        # once the run stops, only the main thread (cleaning up) starts processes
        if _stopping.is_set() and threading.current_thread() is not threading.main_thread():
            raise BuildError("the build is stopping")
        proc = subprocess.Popen(
            [os.fspath(c) for c in cmd], stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd
        )
        _live.add(proc)
    return proc


def _finish(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait()
    finally:
        with _live_lock:
            _live.discard(proc)


def run(
    cmd: Command,
    *,
    log_to: Path | None = None,
    append: bool = False,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    quiet: bool = False,
) -> int:
    """Run a command, its output to log_to (or the terminal, or nowhere when quiet); return its exit code."""
    if log_to is not None:
        with log_to.open("ab" if append else "wb") as sink:
            return _finish(_start(cmd, stdin=stdin, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd))
    target = subprocess.DEVNULL if quiet else None
    return _finish(_start(cmd, stdin=stdin, stdout=target, stderr=target, env=env, cwd=cwd))


def succeeds(cmd: Command, *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> bool:
    """Return whether the command exits 0, its output discarded."""
    return run(cmd, env=env, cwd=cwd, quiet=True) == 0


def output(
    cmd: Command, *, stdin: IO[bytes] | None = None, cwd: Path | None = None, merge_stderr: bool = False
) -> tuple[int, str]:
    """Run a command; return its exit code and its stdout (with stderr when merge_stderr) as text."""
    proc = _start(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.DEVNULL,
        cwd=cwd,
    )
    assert proc.stdout is not None
    data = proc.stdout.read()
    return _finish(proc), data.decode(errors="replace")


def pipe(producer: Command, consumer: Command, *, log_to: Path, env: Mapping[str, str] | None = None) -> bool:
    """Run `producer | consumer` (both must succeed), the consumer's output to log_to."""
    with log_to.open("wb") as sink:
        first = _start(producer, stdout=subprocess.PIPE)
        assert first.stdout is not None
        try:
            second = _start(consumer, stdin=first.stdout, stdout=sink, stderr=subprocess.STDOUT, env=env)
        finally:
            first.stdout.close()  # the consumer holds it now: the producer sees EPIPE if it stops
        consumer_ok = _finish(second) == 0
        return _finish(first) == 0 and consumer_ok


def stopping() -> bool:
    """Whether the run is stopping (a failure elsewhere, or a signal): what fails now is its echo."""
    return _stopping.is_set()


def stop_all() -> None:
    """Stop every subprocess still running, and start no more."""
    with _live_lock:
        _stopping.set()
        procs = list(_live)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- paths ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the build keeps its caches: .cache/images/ under the repository root (git-ignored)."""

    root: Path
    cache_rel: Path = Path(".cache/images")  # relative to the root: paths inside the build context

    @property
    def cache(self) -> Path:
        return self.root / self.cache_rel

    @property
    def rootfs(self) -> Path:
        return self.cache / "rootfs-bookworm"

    @property
    def wheelhouse_rel(self) -> Path:
        return self.cache_rel / "wheelhouse"

    @property
    def wheelhouse(self) -> Path:
        return self.root / self.wheelhouse_rel

    @property
    def pool(self) -> Path:
        return self.wheelhouse / "pool"

    @property
    def context_rel(self) -> Path:
        return self.cache_rel / "context"

    @property
    def logs(self) -> Path:
        return self.cache / "logs"


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or under directory, deepest first (debootstrap mounts /proc, /sys, ... in its target)."""
    prefix = str(directory)
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if len(line.split()) > 1]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)


def unmount_under(directory: Path) -> None:
    """Unmount everything at or under directory (lazily when busy)."""
    for point in mounts_under(directory):
        if not succeeds(["umount", point]):
            succeeds(["umount", "-l", point])


def remove_tree(layout: Layout, directory: Path) -> None:
    """Remove a directory this build owns, never following a mount out of it."""
    if not str(directory).startswith(str(layout.cache) + "/"):
        raise BuildError(f"refusing to remove {directory}: not under {layout.cache}")
    if not directory.exists() and not directory.is_symlink():
        return
    unmount_under(directory)
    if mounts_under(directory):
        raise BuildError(f"cannot unmount everything under {directory}; unmount by hand and rerun")
    if run(["rm", "-rf", "--one-file-system", "--", directory]) != 0:
        raise BuildError(f"cannot remove {directory}")


def need_root(what: str) -> None:
    """Fail unless running as root."""
    if os.geteuid() != 0:
        raise BuildError(
            f"{what} needs root (debootstrap and chroot, root-owned files): rerun as root, e.g. "
            "'sudo scripts/build_images.sh'; once the base images exist, root is no longer needed"
        )


def human_size(path: Path) -> str:
    """The disk usage of a file or tree, as `du -sh` prints it."""
    return output(["du", "-sh", path])[1].split("\t", 1)[0] or "?"


def tail(path: Path, lines: int = 30) -> None:
    """Print the last lines of a log to stderr."""
    if path.is_file():
        echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]), err=True)


# -- timings -------------------------------------------------------------------------------------------
@dataclass
class Timings:
    """Wall-clock seconds of the steps, in the order they finished (steps run side by side)."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, started: float) -> None:
        with self._lock:
            self.steps.append((name, time.monotonic() - started))


def which(name: str) -> bool:
    """Whether a command is on PATH."""
    return shutil.which(name) is not None
