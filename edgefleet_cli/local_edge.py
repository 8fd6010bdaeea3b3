"""Run a whole edge on this machine: field broker, edgeHub stand-in and the module processes.

Used by the tests, the benchmark and the CLI. The field broker is the secure one a device talks to
(`python -m field_broker`: TLS, a password per identity, an ACL); its certificates and identities
are made on the first start in `<workdir>/field-secrets` and kept across runs. `insecure_field`
runs an anonymous plain Mosquitto instead (development only). Modules run as real processes
(`python -m modules.<name>`) with the environment a device would give them: the manifest's
`env` for the module, the stand-in's connection variables, and local overrides (the field
broker's address and the sensor's login, the bundle directory, the health file). Once started, a
`Supervisor` restarts them as their `restartPolicy` says, and a `BrokerKeeper` restarts a field
(or dashboard hub) broker that died (the stand-in keeps its own brokers); a failed start stops
every part it had started. The dashboard's hub broker takes no anonymous clients either (its
credentials: `<workdir>/hub-secrets`, made on the first start, see `edgehub.hub_auth`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from edgefleet.deployment import Deployment
from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import open_private, private_dir
from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER
from edgefleet.secret_files import PasswordFile
from edgefleet_cli.field_process import FieldBrokerProcess
from edgefleet_cli.field_secrets import client_password_file, init_field_dir
from edgefleet_cli.supervisor import (
    MIN_UNHEALTHY_AFTER_S,
    UNHEALTHY_REPORTS,
    Backoff,
    ModuleStatus,
    ModuleWatch,
    Phase,
    RestartPolicy,
    Supervisor,
    describe_exit,
)
from edgehub.broker import AUTOSAVE, Broker, BrokerKeeper, Listener
from edgehub.hub import HubPublisher
from edgehub.hub_auth import HubUsers, ensure_hub_credentials, write_hub_broker_auth
from edgehub.hub_auth import client_password_file as hub_password_file
from edgehub.sink import DEFAULT_ROLL_EVERY_S, LakeSink
from edgehub.standin import EdgeHubStandIn
from edgehub.upstream import MirroredUpstream, Upstream
from field_broker.config import CA_FILE
from field_broker.identities import GATEWAY_USER, SENSOR_USER
from modules.runtime import ModuleSettings

logger = logging.getLogger(__name__)

__all__ = ["EdgeStartError", "FieldEndpoint", "LocalEdge", "ModuleProcess", "free_port"]

FIELD_HOST = "127.0.0.1"  # named in the field broker's certificate (field_secrets.DEFAULT_HOSTS)
FIELD_SECRETS_DIR = "field-secrets"
HUB_SECRETS_DIR = "hub-secrets"
MODULE_STOP_TIMEOUT_S = 40.0
MIRROR_CLOSE_TIMEOUT_S = 5.0
DEFAULT_REPORT_INTERVAL_S: float = ModuleSettings.model_fields["report_interval_s"].default
# The sensor's own past window (modules/sensor/settings.py); a replay widens it, never narrows it.
SENSOR_MAX_READING_AGE = timedelta(days=7)


def replay_module_env(earliest_ts: datetime | str, now: datetime | None = None) -> dict[str, dict[str, str]]:
    """Return module env letting the sensor take a simulation that replays readings dated from `earliest_ts` on.

    The sensor dead-letters readings older than its window around the edge's clock; a simulation
    on simulated time (the demo continues the generated history, dated in the past) is a device
    replaying a backlog on purpose. `earliest_ts` is the simulation's start ("now": no change).
    """
    if not isinstance(earliest_ts, datetime):
        return {}
    behind = (now or datetime.now(UTC)) - earliest_ts
    if behind <= SENSOR_MAX_READING_AGE:
        return {}
    age = behind + SENSOR_MAX_READING_AGE  # a week beyond the start: the replay takes a while to run
    return {"sensor": {"MAX_READING_AGE_S": str(int(age.total_seconds()))}}


def free_port(host: str = FIELD_HOST) -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class FieldEndpoint:
    """How one identity reaches the local field broker: address, and (unless insecure) CA and password file."""

    host: str
    port: int
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    @property
    def url(self) -> str:
        """Return `mqtts://host:port` (`mqtt://` for the insecure dev broker)."""
        return f"{'mqtts' if self.ca_file is not None else 'mqtt'}://{self.host}:{self.port}"


class ModuleProcess:
    """One module as a child process in its own session: `python -m modules.<name>`."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        health = self.env.get("HEALTH_FILE")
        self.health_path = Path(health) if health else None
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def start(self) -> ModuleProcess:
        """Start the process (logs to `<log_dir>/<name>.log`)."""
        # Keep only the dev variables: with IOTEDGE_* set the SDK would look for a real edge runtime.
        env = {key: value for key, value in os.environ.items() if not key.startswith("IOTEDGE_")}
        env.update(self.env)
        private_dir(self.log_path.parent)  # logs may quote readings: owner only
        if self.health_path is not None:
            # A file left by the previous process would make the new one look healthy before it is.
            self.health_path.parent.mkdir(parents=True, exist_ok=True)
            self.health_path.unlink(missing_ok=True)
        with open_private(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"modules.{self.name}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            )
        return self

    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        """Return the exit code (negative: the signal that ended it), None while it runs."""
        return self.process.poll() if self.process is not None else None

    def stopping(self) -> bool:
        """Return whether `stop` was called: the supervisor leaves the module down."""
        return self._stopping

    def terminate(self) -> None:
        """Send SIGTERM without waiting; a stopped (SIGSTOP) process is continued so it sees it."""
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the process and anything it started, without waiting."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                self.process.kill()

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = MODULE_STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM (the module finishes in-flight messages) and wait; kill it after `timeout_s`."""
        self._stopping = True
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Module %s did not stop within %.0f s; killing it", self.name, timeout_s)
                self.kill()
                self.process.wait(5)
        return self.process.returncode

    def log_tail(self, n_bytes: int = 4000) -> str:
        """Return the end of the module's log."""
        try:
            return self.log_path.read_bytes()[-n_bytes:].decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"


class EdgeStartError(EdgefleetError):
    """Raise when a part of the local edge cannot start; the message names the part and its log."""


PartT = TypeVar("PartT")


def _start_part(part: str, log: Path | None, start: Callable[[], PartT]) -> PartT:
    """Start one part; turn its failure into an EdgeStartError naming the part and where it logs."""
    try:
        return start()
    except EdgeStartError:
        raise
    except Exception as err:
        where = f"; log: {log}" if log is not None else ""
        raise EdgeStartError(f"{part} failed to start{where}\n{err}") from err


class LocalEdge:
    """Field broker + edgeHub stand-in (routes and twins from the deployment) + module processes.

    `$upstream` goes to `upstream` when given (the caller closes it), else to a `LakeSink` in
    `lake_dir` (`lake_sink`) that rolls its files as the sink service does (`lake_roll_every_s`; None:
    a file per flush, rows visible within `flush_every_s`); with a dashboard, a copy goes to the hub
    broker it reads. The field broker is the secure one unless `insecure_field`; `field_endpoint()`
    says how to reach it. Start once.
    """

    def __init__(
        self,
        workdir: Path,
        deployment: Deployment,
        *,
        bundle_dir: Path,
        ip_base: str,
        edge_device: str = "edge1",
        modules: tuple[str, ...] = ("sensor", "inference"),
        desired_overrides: Mapping[str, Mapping[str, object]] | None = None,
        module_env: Mapping[str, Mapping[str, str]] | None = None,
        lake_dir: Path | None = None,
        flush_every_s: float = 1.0,
        lake_roll_every_s: float | None = DEFAULT_ROLL_EVERY_S,
        upstream: Upstream | None = None,
        field_port: int | None = None,
        dashboard_port: int | None = None,
        supervise: bool = True,
        restart_backoff: Backoff | None = None,
        unhealthy_after_s: float | None = None,
        insecure_field: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.deployment = deployment
        self.bundle_dir = Path(bundle_dir)
        self.modules = modules
        self.field_port = field_port or free_port()
        self.lake_dir = lake_dir or self.workdir / "lake"
        desired = {module: deployment.desired(module) for module in modules}
        for module, patch in (desired_overrides or {}).items():
            desired[module].update(patch)
        self.insecure_field = insecure_field
        self.field_secrets_dir = self.workdir / FIELD_SECRETS_DIR
        self.field_broker: Broker | FieldBrokerProcess
        if insecure_field:
            self.field_broker = Broker(
                self.workdir / "field",
                "field",
                [Listener(FIELD_HOST, self.field_port)],
                persistent=True,
                autosave=AUTOSAVE,
            )
        else:
            self.field_broker = FieldBrokerProcess(
                self.field_secrets_dir,
                self.workdir / "field",
                FIELD_HOST,
                self.field_port,
                log_path=self.workdir / "field" / "field-broker.log",
            )
        # With a dashboard: a broker it subscribes to, which the stand-in copies `$upstream` to. It
        # refuses anonymous clients: the mirror publishes as the stand-in, the dashboard reads as
        # itself, with passwords made on the first start in <workdir>/hub-secrets and kept.
        self.dashboard_port = dashboard_port
        self.hub_port = free_port() if dashboard_port is not None else None
        self.hub_secrets_dir = self.workdir / HUB_SECRETS_DIR
        self.hub_broker: Broker | None = None
        if self.hub_port is not None:
            credentials = ensure_hub_credentials(self.hub_secrets_dir)
            hub_auth = write_hub_broker_auth(
                private_dir(self.workdir / "hub"), HubUsers.read(credentials.users_file).hashes
            )
            self.hub_broker = Broker(self.workdir / "hub", "hub", [Listener(FIELD_HOST, self.hub_port)], auth=hub_auth)
        self.dashboard: subprocess.Popen[bytes] | None = None
        self.lake_sink: LakeSink | None = None
        if upstream is None:
            self.lake_sink = upstream = LakeSink(self.lake_dir, flush_every_s, roll_every_s=lake_roll_every_s)
        self.mirror: HubPublisher | None = None
        if self.hub_port is not None:
            self.mirror = HubPublisher(
                FIELD_HOST,
                self.hub_port,
                f"edgefleet-mirror-{edge_device}",
                username=HUB_PUBLISHER_USER,
                password=PasswordFile.read(hub_password_file(self.hub_secrets_dir, HUB_PUBLISHER_USER)).password,
            )
            upstream = MirroredUpstream(upstream, self.mirror)
        try:
            self.standin = EdgeHubStandIn(
                self.workdir / "edgehub",
                edge_device,
                list(modules),
                deployment.routes,
                desired,
                upstream=upstream,
                ip_base=ip_base,
                ttl_s=deployment.store_and_forward_ttl_s,
            )
        except BaseException:
            self._close_upstream()
            raise
        self._module_env = {module: dict((module_env or {}).get(module, {})) for module in modules}
        self.processes: dict[str, ModuleProcess] = {}
        self.supervise = supervise
        self.restart_backoff = restart_backoff or Backoff()
        self.unhealthy_after_s = unhealthy_after_s
        self.supervisor: Supervisor | None = None
        self.broker_keeper: BrokerKeeper | None = None
        self._final_statuses: dict[str, ModuleStatus] | None = None  # the supervisor's last word, after stop
        self._stopping = False

    @property
    def field_ca_file(self) -> Path | None:
        """Return the CA certificate clients verify the field broker with (None: the insecure dev broker)."""
        return None if self.insecure_field else self.field_secrets_dir / CA_FILE

    def field_endpoint(self, username: str = GATEWAY_USER) -> FieldEndpoint:
        """Return how `username` reaches the field broker (the gateway: one connection for many devices)."""
        if self.insecure_field:
            return FieldEndpoint(FIELD_HOST, self.field_port)
        return FieldEndpoint(
            FIELD_HOST,
            self.field_port,
            self.field_ca_file,
            username,
            client_password_file(self.field_secrets_dir, username),
        )

    def _field_login_env(self) -> dict[str, str]:
        """Return the sensor's login to the secure field broker: its identity, the CA, the password file."""
        endpoint = self.field_endpoint(SENSOR_USER)
        if endpoint.ca_file is None or endpoint.username is None or endpoint.password_file is None:
            return {}
        return {
            "FIELD_MQTT_CA_FILE": str(endpoint.ca_file),
            "FIELD_MQTT_USERNAME": endpoint.username,
            "FIELD_MQTT_PASSWORD_FILE": str(endpoint.password_file),
        }

    def module_environment(self, module: str) -> dict[str, str]:
        """Return the full environment of one module process."""
        spec = self.deployment.modules.get(module)
        env = dict(spec.env) if spec is not None else {}
        env.update(self.standin.module_environment(module))
        env["PYTHONUNBUFFERED"] = "1"
        if module == "sensor":
            if self.insecure_field:  # the manifest's login is for the secure broker: a plain one takes none
                for name in ("FIELD_MQTT_CA_FILE", "FIELD_MQTT_USERNAME", "FIELD_MQTT_PASSWORD_FILE"):
                    env.pop(name, None)
            env.update(
                {
                    "FIELD_MQTT_HOST": FIELD_HOST,
                    "FIELD_MQTT_PORT": str(self.field_port),
                    "STATE_DIR": str(self.workdir / "sensor-state"),
                    **self._field_login_env(),
                }
            )
        if module == "inference":
            env.update({"BUNDLE_DIR": str(self.bundle_dir), "STATE_DIR": str(self.workdir / "inference-state")})
        env["HEALTH_FILE"] = str(self.workdir / "health" / f"{module}.health")
        env.update(self._module_env[module])
        return env

    def start(self) -> LocalEdge:
        """Start the brokers, the stand-in and every module, then supervise them; return once modules answer.

        On any failure (or Ctrl-C) everything started so far is stopped before the error propagates.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.insecure_field:
                # Kept across runs: the identities (and devices added with `edgefleet field add-device`) stay.
                _start_part("field broker secrets", None, lambda: init_field_dir(self.field_secrets_dir))
            _start_part("field broker", self.field_broker.log_path, self.field_broker.start)
            if self.hub_broker is not None:
                _start_part("dashboard's hub broker", self.hub_broker.log_path, self.hub_broker.start)
                self.dashboard = _start_part("dashboard", self.dashboard_log_path, self._start_dashboard)
            if self.mirror is not None:
                _start_part("dashboard mirror", None, self.mirror.start)
            self.broker_keeper = BrokerKeeper(
                [b for b in (self.field_broker, self.hub_broker) if b is not None]
            ).start()
            _start_part("edgeHub stand-in", self.workdir / "edgehub" / "brokers", self.standin.start)
            for module in self.modules:
                self.start_module(module)
            if self.supervise:
                self.supervisor = Supervisor(self, {module: self._watch(module) for module in self.modules}).start()
        except BaseException:
            try:
                self.stop()
            except Exception:  # the start failure is the error to report
                logger.exception("Stopping the partly started edge failed")
            raise
        return self

    def _watch(self, module: str) -> ModuleWatch:
        """Return the restart decisions for one module: its manifest's restartPolicy, its report interval."""
        spec = self.deployment.modules.get(module)
        policy = RestartPolicy(spec.restart_policy) if spec is not None else RestartPolicy.ALWAYS
        env = self.module_environment(module)
        interval_s = float(env.get("REPORT_INTERVAL_S", DEFAULT_REPORT_INTERVAL_S))
        unhealthy_after_s = self.unhealthy_after_s or max(UNHEALTHY_REPORTS * interval_s, MIN_UNHEALTHY_AFTER_S)
        return ModuleWatch(module, policy, unhealthy_after_s=unhealthy_after_s, backoff=self.restart_backoff)

    @property
    def dashboard_log_path(self) -> Path:
        """Return where the dashboard process logs."""
        return self.workdir / "logs" / "dashboard.log"

    def _start_dashboard(self) -> subprocess.Popen[bytes]:
        """Start the dashboard (`python -m dashboard`) on the hub broker, serving on 127.0.0.1:`dashboard_port`."""
        private_dir(self.dashboard_log_path.parent)
        with open_private(self.dashboard_log_path, "ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dashboard",
                    "--hub",
                    f"{FIELD_HOST}:{self.hub_port}",
                    "--hub-username",
                    HUB_DASHBOARD_USER,
                    "--hub-password-file",
                    str(hub_password_file(self.hub_secrets_dir, HUB_DASHBOARD_USER)),
                    "--port",
                    str(self.dashboard_port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_module(self, module: str, wait: bool = True) -> ModuleProcess:
        """Start (or restart) one module process."""
        process = ModuleProcess(module, self.module_environment(module), self.workdir / "logs").start()
        self.processes[module] = process
        if wait:
            self.wait_module_ready(module)
        return process

    def module_process(self, module: str) -> ModuleProcess | None:
        """Return the module's current process (the supervisor's view of the edge)."""
        return self.processes.get(module)

    def restart_module(self, module: str) -> ModuleProcess:
        """Start a new process for a module that exited, without waiting until it is ready."""
        return self.start_module(module, wait=False)

    def module_statuses(self) -> dict[str, ModuleStatus]:
        """Return each module's state, restart count and last exit code."""
        if self.supervisor is not None:
            return self.supervisor.statuses()
        if self._final_statuses is not None:
            return dict(self._final_statuses)
        statuses = {}
        for module, process in self.processes.items():
            code = process.exit_code()
            phase = Phase.RUNNING if process.running() else Phase.STOPPED if process.stopping() else Phase.DOWN
            statuses[module] = ModuleStatus(module, phase, 0, code)
        return statuses

    def broker_restarts(self) -> dict[str, int]:
        """Return how often each broker (field, dashboard hub, the stand-in's per module) restarted after dying."""
        keeper = self.broker_keeper
        restarts = keeper.restarts() if keeper is not None else {}
        restarts.update({f"edgeHub {module}": count for module, count in self.standin.broker_restarts().items()})
        return restarts

    def method(self, module: str, name: str, payload: object = None, timeout_s: float = 10.0) -> tuple[int, object]:
        """Invoke a direct method on a module; return its status and decoded JSON payload."""
        return self.standin.router.invoke_method(module, name, payload, timeout_s=timeout_s)

    def wait_module_ready(self, module: str, timeout_s: float = 30.0) -> None:
        """Wait until the module answers `stats` (and, for the sensor, has subscribed to the field)."""
        deadline = time.monotonic() + timeout_s
        process = self.processes[module]
        while True:
            if not process.running():
                raise EdgeStartError(
                    f"module {module} exited at start ({describe_exit(process.exit_code())}); "
                    f"log: {process.log_path}\n{process.log_tail()}"
                )
            try:
                status, payload = self.method(module, "stats", timeout_s=2.0)
            except Exception:  # not connected yet
                status, payload = 0, None
            if status == 200 and (module != "sensor" or (isinstance(payload, dict) and payload.get("subscribed"))):
                return
            if time.monotonic() > deadline:
                raise EdgeStartError(
                    f"module {module} not ready within {timeout_s:.0f} s; log: {process.log_path}\n{process.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the supervisor, the modules (SIGTERM), the stand-in, flush the lake, then the dashboard and brokers.

        Every step runs even when an earlier one fails (nothing is left running); the first error is raised.
        """
        self._stopping = True
        errors: list[Exception] = []
        steps = (
            self._stop_supervisor,
            self._stop_broker_keeper,  # before any broker stops: it would start it again
            self._stop_modules,
            self.standin.stop,
            self._close_upstream,
            self._stop_dashboard,
            self.hub_broker.stop if self.hub_broker is not None else None,
            self.field_broker.stop,
        )
        for step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as err:
                logger.exception("Stopping the local edge: %s failed", getattr(step, "__name__", step))
                errors.append(err)
        if errors:
            raise errors[0]

    @property
    def stopping(self) -> bool:
        """Return whether `stop` was called (signal handlers must not interrupt it)."""
        return self._stopping

    def _stop_supervisor(self) -> None:
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            supervisor.stop()
            self._final_statuses = supervisor.statuses()

    def _stop_broker_keeper(self) -> None:
        if self.broker_keeper is not None:
            self.broker_keeper.stop()  # kept: its restart counts are the run's summary

    def _stop_modules(self) -> None:
        for process in self.processes.values():
            try:
                process.stop()
            except Exception:  # stop the others; kill what did not stop
                logger.exception("Stopping module %s failed; killing it", process.name)
                process.kill()

    def _stop_dashboard(self) -> None:
        dashboard, self.dashboard = self.dashboard, None
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait(5)

    def _close_upstream(self) -> None:
        """Write what the lake sink holds and let the dashboard's copy drain; the caller's upstream stays open."""
        mirror, self.mirror = self.mirror, None
        try:
            if self.lake_sink is not None:
                self.lake_sink.close()
        finally:
            if mirror is not None:
                mirror.close(timeout_s=MIRROR_CLOSE_TIMEOUT_S)

    def __enter__(self) -> LocalEdge:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
