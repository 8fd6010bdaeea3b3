"""Run Mosquitto as a child process with a generated configuration.

The stand-in runs one Mosquitto per module (see `edgehub.standin` for why); this
module knows nothing about modules: it writes a config for the listeners it is given,
starts the broker, waits until every listener accepts TCP connections and stops it again.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from edgefleet.broker_journal import journal_config_lines, journal_plugin_for
from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import open_private, private_dir
from edgefleet.mosquitto_passwords import hash_password as mosquitto_password_hash

if TYPE_CHECKING:  # certs needs cryptography, which the sink's image (plain listener) does not have
    from edgehub.certs import CertPaths

logger = logging.getLogger(__name__)

__all__ = [
    "AUTOSAVE",
    "Autosave",
    "Broker",
    "BrokerAuth",
    "BrokerError",
    "BrokerKeeper",
    "KeptBroker",
    "Listener",
    "find_mosquitto",
    "mosquitto_password_hash",
]

# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin")
_LOG_TAIL_BYTES = 4000

# Flow control. Mosquitto's defaults drop messages under bursts: with max_queued_messages 1000,
# a subscriber that falls more than 1000 QoS 1 messages behind silently loses the rest. edgeHub
# stores and forwards instead, so queue (effectively) without limit; the bound only protects the
# host's memory when a module is gone for good. In-flight is Mosquitto's per-client window of
# unacknowledged QoS 1 deliveries: the default 20 throttles a local burst to one round trip per
# 20 messages, while a few hundred keeps the pipe full without hiding a stuck client for long.
MAX_QUEUED_MESSAGES = 5_000_000
MAX_INFLIGHT_MESSAGES = 200


@dataclass(frozen=True, slots=True)
class Autosave:
    """When Mosquitto snapshots its in-memory database to the persistence file."""

    interval: int
    on_changes: bool

    def config_lines(self) -> list[str]:
        """Return the mosquitto.conf lines for this policy."""
        return [f"autosave_interval {self.interval}", f"autosave_on_changes {str(self.on_changes).lower()}"]


# Mosquitto 2.0 persists only by snapshot (on a clean shutdown and on autosave) and acknowledges
# a QoS 1 publish before it saves: a kill -9 loses every message acknowledged since the last
# snapshot (3,912-3,920 readings after a 10 s sensor outage with the old `autosave_interval 30`).
# The journal plugin (edgefleet.broker_journal) closes that gap: each message is appended to a
# journal before Mosquitto acknowledges it and replayed on start. Snapshots then only bound the
# journal and the replay, so every broker takes one every 100 changes. Each snapshot rewrites and
# fsyncs the whole queue, so a snapshot per change (what the module brokers did before the
# journal, to lose at most one message) costs one fsync per message and grows with the queue.
# benchmarks/broker_persistence.py --quick (2-core VM, ext4; offline subscriber, queue growing),
# 2026-12-07:
#
#                         single readings/s   batches of 50/s   CPU ms per 1,000   lost to kill -9
#   every change             570                404               1,120-1,275      1 of 2,000
#   every change + journal   607                338               1,010-1,425      0 of 2,000
#   every 100                18,043             3,301             22-25            2 of 2,000 (up to 100)
#   every 100 + journal      15,854             3,483             18-50            0 of 2,000
#   ... + fdatasync each     5,002              1,889             88-125           0 of 2,000
#
# Without the plugin (not built: a warning at start says so) a kill -9 loses at most the last
# 100 acknowledged messages.
AUTOSAVE = Autosave(interval=100, on_changes=True)


@dataclass(frozen=True, slots=True)
class BrokerAuth:
    """Who may connect: Mosquitto's password file and ACL file (both written by the caller)."""

    password_file: Path
    acl_file: Path

    def config_lines(self) -> list[str]:
        """Return the mosquitto.conf lines: no anonymous clients, these users, these topics."""
        return ["allow_anonymous false", f"password_file {self.password_file}", f"acl_file {self.acl_file}"]


class BrokerError(EdgefleetError):
    """Raise when Mosquitto is missing, cannot start or stops unexpectedly."""


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the broker listens on; TLS when `certs` is set."""

    host: str
    port: int
    certs: CertPaths | None = None


def find_mosquitto() -> str:
    """Return the path of the `mosquitto` executable, or raise with how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerError(
        "mosquitto not found on PATH or in /usr/sbin: install it with apt-get install mosquitto "
        "(macOS: brew install mosquitto)"
    )


def _alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie (a zombie has an empty command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _check_free(listener: Listener) -> None:
    """Raise if another process already listens on the address (the readiness probe would reach it instead)."""
    with socket.socket(socket.AF_INET6 if ":" in listener.host else socket.AF_INET) as probe:
        # Same option as Mosquitto: lingering TIME_WAIT connections are fine, a live listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((listener.host, listener.port))
        except OSError as err:
            raise BrokerError(
                f"cannot listen on {listener.host}:{listener.port}: {err.strerror} "
                "(another broker or stand-in may be using this address; pick another ip_base)"
            ) from err


def render_config(
    listeners: Sequence[Listener],
    user: str | None = None,
    persistence_dir: Path | None = None,
    name: str = "broker",
    autosave: Autosave = AUTOSAVE,
    auth: BrokerAuth | None = None,
    journal_plugin: Path | None = None,
    journal_sync: bool = False,
) -> str:
    """Return a mosquitto.conf for these listeners; with `persistence_dir`, sessions survive a restart.

    With `journal_plugin` too, so does every message acknowledged since the last snapshot (a kill -9
    of the broker; `journal_sync` adds an fdatasync per message for a power loss).
    """
    lines = [
        "# Generated by edgehub; rewritten on every start.",
        "per_listener_settings false",
        # Without `auth` (development only: `--insecure-field`, a sink run with `--allow-anonymous`)
        # any client on the listeners' addresses may connect; the stand-in's module brokers are
        # reached through its SAS front, the hub broker with `edgehub.hub_auth`'s logins.
        *(auth.config_lines() if auth is not None else ["allow_anonymous true"]),
        *_persistence_lines(persistence_dir, name, autosave, journal_plugin, journal_sync),
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "max_queued_bytes 0",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        # Small MQTT packets on loopback: do not wait to coalesce them (Nagle) when latency matters.
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
    ]
    if user:
        # Started as root, Mosquitto switches to the `mosquitto` user before reading the key files
        # and could not read keys that are private to us; naming the current user keeps it as is.
        lines.append(f"user {user}")
    for listener in listeners:
        lines.append("")
        lines.append(f"listener {listener.port} {listener.host}")
        if listener.certs is not None:
            lines.append(f"certfile {listener.certs.server_cert}")
            lines.append(f"keyfile {listener.certs.server_key}")
            lines.append("tls_version tlsv1.2")
    return "\n".join(lines) + "\n"


def _persistence_lines(
    persistence_dir: Path | None, name: str, autosave: Autosave, journal_plugin: Path | None, journal_sync: bool
) -> list[str]:
    if persistence_dir is None:
        return ["persistence false"]
    # Persistent sessions and their queued QoS 1 messages survive a restart, and a kill -9 (see AUTOSAVE).
    snapshot = persistence_dir / f"mosquitto-{name}.db"
    journal = persistence_dir / f"mosquitto-{name}.journal"
    return [
        "persistence true",
        f"persistence_location {persistence_dir}/",
        f"persistence_file {snapshot.name}",
        *autosave.config_lines(),
        *(journal_config_lines(journal_plugin, journal, snapshot, sync=journal_sync) if journal_plugin else []),
    ]


class Broker:
    """One Mosquitto process: `start()` returns when every listener accepts connections."""

    def __init__(
        self,
        state_dir: Path,
        name: str,
        listeners: Sequence[Listener],
        *,
        executable: str | None = None,
        start_timeout_s: float = 10.0,
        persistent: bool = False,
        autosave: Autosave = AUTOSAVE,
        auth: BrokerAuth | None = None,
        journal: bool = True,
        journal_sync: bool = False,
    ) -> None:
        if not listeners:
            raise BrokerError(f"broker {name!r} needs at least one listener")
        self.state_dir = Path(state_dir)
        self.name = name
        self.listeners = tuple(listeners)
        self.executable = executable
        self.start_timeout_s = start_timeout_s
        self.persistent = persistent
        self.autosave = autosave
        self.auth = auth
        # Only a persistent broker has acknowledged messages to keep.
        self.journal = journal and persistent
        self.journal_sync = journal_sync
        self.config_path = self.state_dir / f"mosquitto-{name}.conf"
        self.log_path = self.state_dir / f"mosquitto-{name}.log"
        self.pid_path = self.state_dir / f"mosquitto-{name}.pid"
        self._process: subprocess.Popen[bytes] | None = None
        # Between start() and stop()/kill() the broker should run: a `BrokerKeeper` restarts it then.
        self._wanted = False
        self._last_exit: int | None = None
        # A keeper thread and a caller may start or stop the same broker at once.
        self._lock = threading.RLock()

    @property
    def pid(self) -> int | None:
        """Return the broker's process id while it runs."""
        process = self._process
        return process.pid if process is not None else None

    def running(self) -> bool:
        """Return whether the broker process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    def died(self) -> bool:
        """Return whether the broker should run (started, not stopped on purpose) but does not."""
        return self._wanted and not self.running()

    def exit_code(self) -> int | None:
        """Return how the last broker process ended (negative: the signal), None if none ended yet."""
        process = self._process
        if process is not None and process.poll() is not None:
            self._last_exit = process.returncode
        return self._last_exit

    def start(self) -> Broker:
        """Write the config, start Mosquitto and wait until all listeners accept connections."""
        with self._lock:
            self._wanted = True
            return self._start()

    def _start(self) -> Broker:
        if self.running():
            return self
        self.exit_code()  # remember how the previous process ended before replacing it
        executable = self.executable or find_mosquitto()
        self._stop_stale()
        for listener in self.listeners:
            _check_free(listener)
        private_dir(self.state_dir)  # persistence holds queued messages; the log names clients and topics
        user = getpass.getuser() if os.geteuid() == 0 else None
        persistence_dir = self.state_dir.resolve() if self.persistent else None
        self.config_path.write_text(
            render_config(
                self.listeners,
                user,
                persistence_dir,
                self.name,
                self.autosave,
                self.auth,
                self._journal_plugin(),
                self.journal_sync,
            )
        )
        with open_private(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            self._wait_until_listening()
        except BaseException:
            self._end_process()
            raise
        logger.info(
            "Started mosquitto %r (pid %d) on %s",
            self.name,
            self._process.pid,
            ", ".join(f"{lis.host}:{lis.port}{' tls' if lis.certs else ''}" for lis in self.listeners),
        )
        return self

    def _journal_plugin(self) -> Path | None:
        """Return the journal plugin this broker loads (None when not persistent or not installed)."""
        return journal_plugin_for(f"mosquitto {self.name!r}") if self.journal else None

    def _wait_until_listening(self) -> None:
        """Poll the listeners until they accept TCP connections, the process dies or time runs out."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        pending = list(self.listeners)
        while pending:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"mosquitto {self.name!r} exited with code {self._process.returncode} at start "
                    f"(config {self.config_path}):\n{self.log_tail()}"
                )
            listener = pending[0]
            try:
                with socket.create_connection((listener.host, listener.port), timeout=0.5):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto {self.name!r} did not listen on {listener.host}:{listener.port} within "
                    f"{self.start_timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        if self._process.poll() is not None:
            raise BrokerError(f"mosquitto {self.name!r} exited right after start:\n{self.log_tail()}")

    def _stop_stale(self) -> None:
        """Stop a broker left running by a crashed earlier run with this very config file."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return  # no pid file, or that process is gone (or no /proc: nothing to check safely)
        # Only ever signal a process that is our broker: same executable name and config path.
        if len(cmdline) < 3 or Path(os.fsdecode(cmdline[0])).name != "mosquitto":
            return
        if os.fsdecode(cmdline[2]) != str(self.config_path):
            return
        logger.warning("Stopping stale mosquitto %r (pid %d) from an earlier run", self.name, pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self) -> str:
        """Return the end of the broker's log, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - _LOG_TAIL_BYTES))
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it does not exit in time; a keeper leaves it stopped."""
        with self._lock:
            self._wanted = False
            self._end_process(timeout_s)

    def _end_process(self, timeout_s: float = 5.0) -> None:
        self.exit_code()
        process, self._process = self._process, None
        self.pid_path.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("mosquitto %r did not stop in %.0f s; killing it", self.name, timeout_s)
            process.kill()
            process.wait(timeout_s)
        logger.info("Stopped mosquitto %r", self.name)

    def kill(self, timeout_s: float = 5.0) -> None:
        """Kill the broker with SIGKILL, as a crash would, and leave it down (a keeper does not restart it).

        `start()` brings it back on the same files.
        """
        with self._lock:
            self._wanted = False
            process, self._process = self._process, None
            if process is None or process.poll() is not None:
                return
            process.kill()
            process.wait(timeout_s)
            self._last_exit = process.returncode
            logger.info("Killed mosquitto %r", self.name)

    def restart_if_died(self) -> bool:
        """Start the broker again if it died (not if it was stopped or killed on purpose); return whether it did."""
        with self._lock:
            if not self.died():
                return False
            self._start()
            return True

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# A dead broker is noticed within this (the health loops that report it run every few seconds).
KEEPER_INTERVAL_S = 0.2
# A broker that dies again within this long of its restart is failing, not crashing once: back off.
SETTLED_AFTER_S = 10.0
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
_LOG_TAIL_LINES = 10


class KeptBroker(Protocol):
    """What a `BrokerKeeper` needs of a broker: a `Broker`, or another process with the same life cycle."""

    @property
    def name(self) -> str: ...

    def running(self) -> bool: ...

    def died(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def restart_if_died(self) -> bool: ...

    def log_tail(self) -> str: ...


@dataclass(slots=True)
class _Revival:
    """Restart bookkeeping of one broker."""

    restarts: int = 0
    failures: int = 0  # deaths or failed starts in a row, each soon after the previous start
    started_s: float = 0.0
    retry_at_s: float | None = None  # set once its death was noticed and logged
    problem: str | None = None  # why it is down, while it is


class BrokerKeeper:
    """A thread that restarts brokers that died: at once, then backing off while one keeps dying right away.

    edgeHub never loses its listeners; the stand-in's Mosquitto children can (a crash, the OOM
    killer, a kill -9). The keeper starts a dead broker again on the same config, addresses and
    persistence files. A broker stopped or killed on purpose (`stop()`, `kill()`) stays down.
    """

    def __init__(
        self,
        brokers: Sequence[KeptBroker],
        *,
        interval_s: float = KEEPER_INTERVAL_S,
        settled_after_s: float = SETTLED_AFTER_S,
        backoff_initial_s: float = RESTART_BACKOFF_INITIAL_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
    ) -> None:
        self.brokers = tuple(brokers)
        self.interval_s = interval_s
        self.settled_after_s = settled_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        now = time.monotonic()
        self._revivals = {broker.name: _Revival(started_s=now) for broker in self.brokers}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BrokerKeeper:
        """Start watching the (running) brokers."""
        self._thread = threading.Thread(target=self._run, name="broker-keeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; a restart under way finishes first. Call before stopping the brokers."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def restarts(self) -> dict[str, int]:
        """Return how often each broker was restarted."""
        with self._lock:
            return {name: revival.restarts for name, revival in self._revivals.items()}

    def problems(self) -> list[str]:
        """Return why brokers are down, one line each (empty while all run)."""
        with self._lock:
            found = {name: revival.problem for name, revival in self._revivals.items()}
        return [
            found[broker.name] or f"mosquitto {broker.name!r} is down"
            for broker in self.brokers
            if not broker.running()
        ]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check(time.monotonic())

    def check(self, now_s: float) -> None:
        """Restart every broker that died and whose backoff has passed."""
        for broker in self.brokers:
            if self._stop.is_set():
                return
            try:
                self._check(broker, now_s)
            except Exception:  # keep the other brokers; the next round tries again
                logger.exception("Checking mosquitto %r failed", broker.name)

    def _check(self, broker: KeptBroker, now_s: float) -> None:
        revival = self._revivals[broker.name]
        if not broker.died():
            return
        if revival.retry_at_s is None:
            self._noticed(broker, revival, now_s, f"exited with {_describe_exit(broker.exit_code())}")
        assert revival.retry_at_s is not None
        if now_s < revival.retry_at_s:
            return
        try:
            restarted = broker.restart_if_died()
        except BrokerError as err:
            with self._lock:
                revival.retry_at_s = None
            self._noticed(broker, revival, now_s, f"could not be restarted: {err}", failed_start=True)
            return
        if restarted:
            with self._lock:
                revival.restarts += 1
                revival.started_s = now_s
                revival.retry_at_s = None
                revival.problem = None
            logger.warning("Restarted mosquitto %r (restart %d)", broker.name, revival.restarts)

    def _noticed(
        self, broker: KeptBroker, revival: _Revival, now_s: float, what: str, *, failed_start: bool = False
    ) -> None:
        """Log a death or failed start and schedule the next try: at once, or later if it keeps failing."""
        again = failed_start or now_s - revival.started_s < self.settled_after_s
        with self._lock:
            revival.failures = revival.failures + 1 if again else 1
            delay_s = self.delay_s(revival.failures)
            revival.retry_at_s = now_s + delay_s
            revival.problem = f"mosquitto {broker.name!r} {what.splitlines()[0]}"
        when = "now" if delay_s == 0 else f"in {delay_s:.1f} s ({revival.failures} failures in a row)"
        # A failed start's message carries the log already.
        log_tail = "" if failed_start else "\n".join(broker.log_tail().splitlines()[-_LOG_TAIL_LINES:])
        logger.warning("mosquitto %r %s; restarting it %s\n%s", broker.name, what, when, log_tail)

    def delay_s(self, failures: int) -> float:
        """Return the wait before the next start after `failures` failures in a row: none for the first."""
        if failures <= 1:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(failures - 2, 32)))


def _describe_exit(exit_code: int | None) -> str:
    """Return `exit code 1` or `signal SIGKILL` for a Popen return code."""
    if exit_code is None:
        return "an unknown status"
    if exit_code < 0:
        try:
            return f"signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"signal {-exit_code}"
    return f"exit code {exit_code}"
