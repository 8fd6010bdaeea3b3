"""The secure field broker (`python -m field_broker`) as a child process of the local edge.

It has the start/stop/died interface of `edgehub.broker.Broker`, so the same `BrokerKeeper`
restarts it when it dies. The process renders its Mosquitto config from the field secrets
directory and runs Mosquitto as its own child (which exits with it). Ready means this process
says so (its health file, touched once its Mosquitto listens) and the port completes a TLS
handshake with the broker's certificate: a port that merely accepts TCP may be someone else's.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from edgefleet.mqtt_login import tls_context
from edgehub.broker import BrokerError
from field_broker.config import CA_FILE

logger = logging.getLogger(__name__)

__all__ = ["FieldBrokerProcess"]

START_TIMEOUT_S = 20.0
# The process stops Mosquitto (which saves its queue) before it exits; give it that long.
STOP_TIMEOUT_S = 15.0
_LOG_TAIL_BYTES = 4000


class FieldBrokerProcess:
    """`python -m field_broker` with TLS on `host:port`: `start()` returns when the TLS port accepts connections."""

    def __init__(
        self,
        config_dir: Path,
        state_dir: Path,
        host: str,
        port: int,
        *,
        log_path: Path,
        name: str = "field",
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.health_path = self.log_path.with_suffix(".health")
        self.name = name
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        # Between start() and stop()/kill() the broker should run: a `BrokerKeeper` restarts it then.
        self._wanted = False
        self._last_exit: int | None = None
        self._lock = threading.RLock()  # the keeper's thread and a caller may start or stop it at once

    @property
    def pid(self) -> int | None:
        """Return the field broker process's id while it runs."""
        process = self._process
        return process.pid if process is not None else None

    def command(self) -> list[str]:
        """Return the command line of the field broker process."""
        return [
            sys.executable,
            "-m",
            "field_broker",
            "--config-dir",
            str(self.config_dir),
            "--state-dir",
            str(self.state_dir),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--health-file",
            str(self.health_path),
        ]

    def running(self) -> bool:
        """Return whether the process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    def died(self) -> bool:
        """Return whether the broker should run (started, not stopped on purpose) but does not."""
        return self._wanted and not self.running()

    def exit_code(self) -> int | None:
        """Return how the last process ended (negative: the signal), None if none ended yet."""
        process = self._process
        if process is not None and process.poll() is not None:
            self._last_exit = process.returncode
        return self._last_exit

    def start(self) -> FieldBrokerProcess:
        """Start the process and wait until its TLS port accepts connections."""
        with self._lock:
            self._wanted = True
            return self._start()

    def _start(self) -> FieldBrokerProcess:
        if self.running():
            return self
        self.exit_code()  # remember how the previous process ended before replacing it
        # Flags only: FIELD_BROKER_* variables of the caller's shell must not change the local edge's broker.
        env = {key: value for key, value in os.environ.items() if not key.startswith("FIELD_BROKER_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.health_path.unlink(missing_ok=True)  # the previous process's would say ready too early
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            )
        try:
            self._wait_until_listening()
        except BaseException:
            self._end_process()
            raise
        logger.info("Started the field broker (pid %d) with TLS on %s:%d", self._process.pid, self.host, self.port)
        return self

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the field broker exited with code {self._process.returncode} at start "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if self.health_path.exists() and self._completes_tls_handshake():
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the field broker did not listen on {self.host}:{self.port} within "
                    f"{self.start_timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _completes_tls_handshake(self) -> bool:
        """Return whether the port answers a TLS handshake with a certificate the CA signed for our host."""
        try:
            context = tls_context(self.config_dir / CA_FILE)
            with (
                socket.create_connection((self.host, self.port), timeout=1.0) as raw,
                context.wrap_socket(raw, server_hostname=self.host),
            ):
                return True
        except OSError:  # refused, timed out, or the handshake failed (ssl.SSLError is an OSError)
            return False

    def log_tail(self) -> str:
        """Return the end of the broker's log, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker (SIGTERM: Mosquitto saves its queue), SIGKILL after `timeout_s`; a keeper leaves it down."""
        with self._lock:
            self._wanted = False
            self._end_process(timeout_s)

    def _end_process(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.exit_code()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("The field broker did not stop in %.0f s; killing it", timeout_s)
            process.kill()
            process.wait(timeout_s)
        logger.info("Stopped the field broker")

    def kill(self, timeout_s: float = 5.0) -> None:
        """Kill the process with SIGKILL, as a crash would (its Mosquitto exits with it), and leave it down.

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

    def restart_if_died(self) -> bool:
        """Start the broker again if it died (not if it was stopped or killed on purpose); return whether it did."""
        with self._lock:
            if not self.died():
                return False
            self._start()
            return True

    def __enter__(self) -> FieldBrokerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
