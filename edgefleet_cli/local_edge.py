"""Run a whole edge on this machine: field broker, edgeHub stand-in and the module processes.

Used by the tests, the benchmark and the CLI. Modules run as real processes
(`python -m modules.<name>`) with the environment a device would give them: the manifest's
`env` for the module, the stand-in's connection variables, and local overrides (the field
broker's address, the bundle directory).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from edgefleet.deployment import Deployment
from edgefleet.errors import EdgefleetError
from edgehub.broker import Broker, Listener
from edgehub.hub import HubPublisher
from edgehub.sink import LakeSink
from edgehub.standin import EdgeHubStandIn
from edgehub.upstream import MirroredUpstream, Upstream

logger = logging.getLogger(__name__)

FIELD_HOST = "127.0.0.1"
MODULE_STOP_TIMEOUT_S = 40.0
MIRROR_CLOSE_TIMEOUT_S = 5.0
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


class ModuleProcess:
    """One module as a child process: `python -m modules.<name>`."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ModuleProcess:
        """Start the process (logs to `<log_dir>/<name>.log`)."""
        # Keep only the dev variables: with IOTEDGE_* set the SDK would look for a real edge runtime.
        env = {key: value for key, value in os.environ.items() if not key.startswith("IOTEDGE_")}
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"modules.{self.name}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = MODULE_STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM (the module finishes in-flight messages) and wait; kill it after `timeout_s`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Module %s did not stop within %.0f s; killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log_tail(self, n_bytes: int = 4000) -> str:
        """Return the end of the module's log."""
        try:
            return self.log_path.read_bytes()[-n_bytes:].decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"


class LocalEdge:
    """Field broker + edgeHub stand-in (routes and twins from the deployment) + module processes.

    `$upstream` goes to `upstream` when given (the caller closes it), else to a `LakeSink` in
    `lake_dir` (`lake_sink`); with a dashboard, a copy goes to the hub broker it reads. Start once.
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
        upstream: Upstream | None = None,
        field_port: int | None = None,
        dashboard_port: int | None = None,
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
        self.field_broker = Broker(
            self.workdir / "field", "field", [Listener(FIELD_HOST, self.field_port)], persistent=True
        )
        # With a dashboard: a plain broker it subscribes to, which the stand-in copies `$upstream` to.
        self.dashboard_port = dashboard_port
        self.hub_port = free_port() if dashboard_port is not None else None
        self.hub_broker = (
            Broker(self.workdir / "hub", "hub", [Listener(FIELD_HOST, self.hub_port)]) if self.hub_port else None
        )
        self.dashboard: subprocess.Popen[bytes] | None = None
        self.lake_sink: LakeSink | None = None
        if upstream is None:
            self.lake_sink = upstream = LakeSink(self.lake_dir, flush_every_s)
        self.mirror: HubPublisher | None = None
        if self.hub_port is not None:
            self.mirror = HubPublisher(FIELD_HOST, self.hub_port, f"edgefleet-mirror-{edge_device}")
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
            )
        except BaseException:
            self._close_upstream()
            raise
        self._module_env = {module: dict((module_env or {}).get(module, {})) for module in modules}
        self.processes: dict[str, ModuleProcess] = {}

    def module_environment(self, module: str) -> dict[str, str]:
        """Return the full environment of one module process."""
        spec = self.deployment.modules.get(module)
        env = dict(spec.env) if spec is not None else {}
        env.update(self.standin.module_environment(module))
        env["PYTHONUNBUFFERED"] = "1"
        if module == "sensor":
            env.update({"FIELD_MQTT_HOST": FIELD_HOST, "FIELD_MQTT_PORT": str(self.field_port)})
        if module == "inference":
            env.update({"BUNDLE_DIR": str(self.bundle_dir), "STATE_DIR": str(self.workdir / "inference-state")})
        env.update(self._module_env[module])
        return env

    def start(self) -> LocalEdge:
        """Start the field broker, the stand-in and every module; return once modules answer."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.field_broker.start()
        if self.hub_broker is not None:
            self.hub_broker.start()
            self.dashboard = self._start_dashboard()
        if self.mirror is not None:
            self.mirror.start()
        self.standin.start()
        for module in self.modules:
            self.start_module(module)
        return self

    def _start_dashboard(self) -> subprocess.Popen[bytes]:
        """Start the dashboard (`python -m dashboard`) on the hub broker, serving on 127.0.0.1:`dashboard_port`."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "logs" / "dashboard.log", "ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dashboard",
                    "--hub",
                    f"{FIELD_HOST}:{self.hub_port}",
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

    def method(self, module: str, name: str, payload: object = None, timeout_s: float = 10.0) -> tuple[int, object]:
        """Invoke a direct method on a module; return its status and decoded JSON payload."""
        return self.standin.router.invoke_method(module, name, payload, timeout_s=timeout_s)

    def wait_module_ready(self, module: str, timeout_s: float = 30.0) -> None:
        """Wait until the module answers `stats` (and, for the sensor, has subscribed to the field)."""
        deadline = time.monotonic() + timeout_s
        process = self.processes[module]
        while True:
            if not process.running():
                raise EdgefleetError(f"module {module} exited at start:\n{process.log_tail()}")
            try:
                status, payload = self.method(module, "stats", timeout_s=2.0)
            except Exception:  # not connected yet
                status, payload = 0, None
            if status == 200 and (module != "sensor" or (isinstance(payload, dict) and payload.get("subscribed"))):
                return
            if time.monotonic() > deadline:
                raise EdgefleetError(f"module {module} not ready within {timeout_s:.0f} s:\n{process.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop modules (SIGTERM), then the stand-in, then flush the lake, then the brokers."""
        for process in self.processes.values():
            process.stop()
        try:
            self.standin.stop()
        finally:
            self._close_upstream()
        dashboard, self.dashboard = self.dashboard, None
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
                dashboard.wait(5)
        if self.hub_broker is not None:
            self.hub_broker.stop()
        self.field_broker.stop()

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
