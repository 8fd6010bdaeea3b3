"""Run Mosquitto as the field broker: render its files from the config directory, start, reload, stop.

The password file is the list of identities; the ACL is rendered from it into the state directory.
When the password file changes (a device added or removed), the ACL is rendered again and
Mosquitto is sent SIGHUP, which makes it re-read both: new devices get in without a restart.

Mosquitto runs in its own session, so a kill -9 of this process would leave it serving on the
port: on Linux it is told to exit (SIGTERM: it saves its queue) when its parent dies, and a start
stops a Mosquitto that an earlier run left behind (`mosquitto.pid` in the state directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from edgefleet.broker_journal import journal_plugin_for
from edgefleet.errors import StartError
from field_broker.config import ConfigFiles, check_config_dir, read_identities, render_config
from field_broker.identities import render_acl
from field_broker.passwords import write_secret
from field_broker.settings import FieldBrokerSettings

logger = logging.getLogger(__name__)

__all__ = ["FIX_HINT", "FieldBroker", "find_mosquitto"]

FIX_HINT: Final = (
    "Create the files with `edgefleet field init --dir DIR` (then `edgefleet field add-device ID --dir DIR`) "
    "and give the broker that directory (--config-dir), readable by the user it runs as."
)
START_TIMEOUT_S: Final = 10.0
STALE_STOP_TIMEOUT_S: Final = 10.0  # a Mosquitto stopped with SIGTERM saves its queue first
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_DIRS: Final = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin")


def find_mosquitto() -> str:
    """Return the path of the `mosquitto` executable, or raise StartError with how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StartError("mosquitto not found on PATH or in /usr/sbin: install it (apt-get install mosquitto)")


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Return what changes when a file is rewritten (atomically or in place), None when it is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie (a zombie has an empty command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _exit_with_parent() -> Callable[[], None] | None:
    """Return a pre-exec hook making the child get SIGTERM when we die (Linux), None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl  # loaded here: the hook runs between fork and exec
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # we died before the hook ran: nobody would signal it
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class FieldBroker:
    """One Mosquitto child with the field broker's configuration."""

    def __init__(self, settings: FieldBrokerSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.config_path = self.state_dir / "mosquitto.conf"
        self.acl_path = self.state_dir / "acl"
        self.pid_path = self.state_dir / "mosquitto.pid"
        self._files: ConfigFiles | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._seen: tuple[int, int, int] | None = None

    @property
    def pid(self) -> int | None:
        """Return Mosquitto's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        """Return whether Mosquitto is alive."""
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """Return Mosquitto's exit code once it ended (negative: the signal)."""
        return self._process.poll() if self._process is not None else None

    def start(self) -> FieldBroker:
        """Check the config directory, write the config and ACL, start Mosquitto and wait until it listens."""
        settings = self.settings
        executable = find_mosquitto()
        files = check_config_dir(settings.config_dir, FIX_HINT)
        self._files = files
        self._seen = _signature(files.password_file)
        users = read_identities(files.password_file)
        ports = [settings.port] + ([settings.insecure_plain_port] if settings.insecure_plain_port else [])
        self._stop_stale()
        for port in ports:
            _check_free(settings.bind, port)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)  # it holds the ACL, the config and every queued reading
        write_secret(self.acl_path, render_acl(users))
        user = getpass.getuser() if os.geteuid() == 0 else None
        conf = render_config(
            files=files,
            acl_file=self.acl_path,
            state_dir=self.state_dir,
            port=settings.port,
            bind=settings.bind,
            user=user,
            insecure_plain_port=settings.insecure_plain_port,
            journal_plugin=journal_plugin_for("field broker"),
        )
        write_secret(self.config_path, conf)
        if settings.insecure_plain_port is not None:
            logger.warning(
                "INSECURE: port %d takes anonymous, unencrypted connections with no ACL; development only",
                settings.insecure_plain_port,
            )
        self._process = subprocess.Popen(
            [executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in a terminal reaches us, and we stop it in order
            preexec_fn=_exit_with_parent(),  # safe: no thread of ours runs yet
        )
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            self._wait_until_listening(ports)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "Field broker (mosquitto pid %d) listening with TLS on %s:%d for %d identities",
            self._process.pid,
            settings.bind,
            settings.port,
            len(users),
        )
        return self

    def _wait_until_listening(self, ports: list[int]) -> None:
        assert self._process is not None
        host = "127.0.0.1" if self.settings.bind in ("0.0.0.0", "::") else self.settings.bind
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(ports)
        while pending:
            if self._process.poll() is not None:
                raise StartError(
                    f"mosquitto exited with code {self._process.returncode} at start (config {self.config_path}); "
                    "its log is above"
                )
            try:
                with socket.create_connection((host, pending[0]), timeout=0.5):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StartError(f"mosquitto did not listen on {host}:{pending[0]} within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def _stop_stale(self) -> None:
        """Stop a Mosquitto left running with our config by an earlier run that was killed."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return  # no pid file, or that process is gone (or no /proc: nothing to check safely)
        # Only ever signal our own broker: a mosquitto executable started with this very config file.
        if len(cmdline) < 3 or Path(os.fsdecode(cmdline[0])).name != "mosquitto":
            return
        if os.fsdecode(cmdline[2]) != str(self.config_path):
            return
        logger.warning("Stopping mosquitto (pid %d) left running by an earlier field broker", pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + STALE_STOP_TIMEOUT_S
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def reload_if_changed(self, force: bool = False) -> bool:
        """Render the ACL again and SIGHUP Mosquitto when the password file changed (or `force`); return whether."""
        assert self._files is not None, "start() first"
        password_file = self._files.password_file
        seen = _signature(password_file)
        if not force and seen == self._seen:
            return False
        self._seen = seen
        try:
            check_config_dir(self.settings.config_dir, FIX_HINT)
            users = read_identities(password_file)
        except StartError as err:
            # A half-edited or broken file: keep serving the identities Mosquitto has loaded.
            logger.error("Not reloading the identities; the broker keeps the previous ones: %s", err)
            return False
        write_secret(self.acl_path, render_acl(users))
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGHUP)
        logger.info("Reloaded %d identities from %s", len(users), password_file)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Mosquitto (SIGTERM: it saves its persistence file), SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        self.pid_path.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("mosquitto did not stop within %.0f s; killing it", timeout_s)
            process.kill()
            process.wait(timeout_s)
        logger.info("Stopped the field broker")


def _check_free(host: str, port: int) -> None:
    """Raise StartError if another process listens on the address (the readiness probe would reach it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise StartError(
                f"cannot listen on {host}:{port}: {err.strerror} (another broker may use it; pick another port)"
            ) from err
