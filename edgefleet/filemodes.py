"""Create files and folders that hold data or secrets readable by their owner only (0600 / 0700).

Modes are set where the file or folder is made (`os.open(..., 0o600)`, `mkdir(mode=0o700)`) and
then fixed with `chmod`: a restrictive mode given at creation is never widened by the umask, but a
file or folder left by an older version keeps the mode it was made with.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PUBLIC_DIR_MODE",
    "PUBLIC_FILE_MODE",
    "open_private",
    "private_dir",
    "write_atomic",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700, or narrow it to 0700 if we own it; return it. Raise OSError."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _set_mode(path, PRIVATE_DIR_MODE)
    return path


def open_private(path: Path, mode: str = "ab") -> IO[bytes]:
    """Open `path` for binary writing ("ab" appends, "wb" truncates), created or narrowed to 0600."""
    if mode not in ("ab", "wb"):
        raise ValueError(f"open_private writes bytes: mode 'ab' or 'wb', not {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode, buffering=0)
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: Path, data: bytes, file_mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` to `path` through a dot-prefixed temporary file renamed into place, with this mode."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
    try:
        os.fchmod(fd, file_mode)  # the umask may have narrowed it, an older file may be wider
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        _keep_owner(fd, path)
    finally:
        os.close(fd)
    tmp.replace(path)


def _keep_owner(fd: int, replaced: Path) -> None:
    """Give the new file the owner of the one it replaces: root editing a container user's file must not lock it out."""
    try:
        before = replaced.stat()
    except FileNotFoundError:
        return
    if os.geteuid() == 0 and (before.st_uid, before.st_gid) != (os.getuid(), os.getgid()):
        os.fchown(fd, before.st_uid, before.st_gid)


def _set_mode(path: Path, mode: int) -> None:
    """Chmod `path` to `mode` if it is ours and has another mode (a shared folder such as /tmp stays as it is)."""
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)
