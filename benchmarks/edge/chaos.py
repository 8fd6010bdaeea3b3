"""Chaos test of the edge: kill -9 its processes at random under QoS 1 load; account for every reading.

The edge runs as plain processes on loopback, as docker-compose runs it (no Docker):

- field broker: `python -m field_broker` (Mosquitto with TLS, passwords and an ACL as its child,
  which exits with it), its secrets made by `edgefleet field init`; the sensor and the load log in,
- sink service: `python -m edgehub.sink_service` (its own hub broker as a child, the lake writer),
- stand-in: `python -m edgehub --upstream-mqtt <sink>` with the deployment template (one broker
  child per module),
- modules: `python -m modules.sensor` and `python -m modules.inference` with the env files the
  stand-in writes,
- load: a QoS 1 paho publisher in this process (the field broker's gateway identity, over TLS),
  never killed, publishing unique (device_id, seq) readings to the field topic at a fixed rate
  until the chaos is over,
- supervisor: `edgefleet_cli.supervisor.Supervisor` restarts every process that exits.

A seeded schedule kill -9s one target at a time: a process above, or one of the brokers that the
stand-in and the sink service run as children (their parent is expected to restart those; one that
is not back within `broker_restart_timeout_s` is a finding, and the harness brings it back by
killing its parent, which the supervisor restarts). The next kill comes once the killed part and
the whole edge are back, plus a random pause.

The verdict reads the lake after the load has ended and the lake stopped growing: every sent
reading must be in the lake with a prediction, or be a dead letter. A lost reading is blamed on
the kill whose outage it was published in, else on the first kill after it was published (`blame`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow.parquet as pq

from edgefleet.bundle import read_manifest
from edgefleet.deployment import DEFAULT_TEMPLATE, load_deployment
from edgefleet.hub_wire import HUB_PUBLISHER_USER
from edgefleet.lake import PREDICTION_VALUE_COLUMN, SOURCE_COLUMN, read_deadletters, read_lake
from edgefleet.mqtt_login import PasswordFile, tls_context
from edgefleet_cli.field_secrets import client_password_file, init_field_dir
from edgefleet_cli.supervisor import Backoff, ModuleWatch, RestartPolicy, Supervisor
from edgehub.hub_auth import USERS_FILE, ensure_hub_credentials
from edgehub.hub_auth import client_password_file as hub_password_file
from field_broker.config import CA_FILE
from field_broker.identities import GATEWAY_USER, SENSOR_USER

logger = logging.getLogger(__name__)

__all__ = ["SEED_ENV", "ChaosConfig", "ChaosEdge", "ChaosReport", "Kill", "attribute", "run_chaos", "seed_from_env"]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / DEFAULT_TEMPLATE
HOST = "127.0.0.1"
SEED_ENV = "EDGEFLEET_CHAOS_SEED"  # reproduce a run: the seed is printed with the report
FIELD_TOPIC = "fleet/{device}/telemetry"
# Processes the supervisor runs; broker children are named `<parent>-broker[:<module>]`.
FIELD_BROKER, SINK, STANDIN, SENSOR, INFERENCE = "field-broker", "sink", "standin", "sensor", "inference"
PROCESSES = (FIELD_BROKER, SINK, STANDIN, SENSOR, INFERENCE)
SINK_BROKER = "sink-broker"
STANDIN_BROKERS = {"standin-broker:sensor": SENSOR, "standin-broker:inference": INFERENCE}
BROKER_PARENTS = {SINK_BROKER: SINK, **dict.fromkeys(STANDIN_BROKERS, STANDIN)}
TARGETS = (*PROCESSES, SINK_BROKER, *STANDIN_BROKERS)
FEATURE_RANGES = {"temperature_c": (20.0, 7.0), "humidity_pct": (50.0, 12.0), "vibration_mm_s": (2.0, 1.0)}
MODULE_HEALTH_FRESH_S = 3.0  # modules touch their health file every report interval (0.5 s here)
_KEY = re.compile(rb'"device_id"\s*:\s*"([^"]+)"\s*,\s*"seq"\s*:\s*(\d+)')


@dataclass(frozen=True)
class ChaosConfig:
    """How hard and how long to shake the edge."""

    kills: int = 20
    seed: int = 1
    rate_per_s: float = 150.0
    devices: int = 8
    pause_s: tuple[float, float] = (0.5, 2.0)  # after the killed part is back, before the next kill
    targets: tuple[str, ...] = TARGETS
    warmup_s: float = 3.0  # load before the first kill
    tail_s: float = 3.0  # load after the last kill is back
    back_timeout_s: float = 60.0  # a process not back by then ends the chaos (a finding)
    broker_restart_timeout_s: float = 10.0  # a broker child its parent did not restart by then: a finding
    drain_quiet_s: float = 15.0  # the lake stopped growing this long: drained
    drain_timeout_s: float = 120.0


@dataclass
class Kill:
    """One kill -9 and what followed it."""

    index: int
    target: str
    pid: int
    at_s: float  # since the load started
    back_after_s: float | None = None
    findings: list[str] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0


# -- processes -----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ChaosProcess:
    """One supervised process in its own session (what `Supervisor` watches)."""

    health_path: Path | None = None  # the supervisor restarts on exit only; readiness is checked here

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self._stopping = False

    def exit_code(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def stopping(self) -> bool:
        return self._stopping

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, wait, then SIGKILL the process group."""
        self._stopping = True
        self.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _read_env_file(path: Path) -> dict[str, str]:
    """Parse the stand-in's `KEY="value"` module env file."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip().strip('"')
    return env


def pick_ip_base(rng: random.Random) -> str:
    """Return a loopback block whose module addresses (.10, .11) have port 8883 free."""
    for _ in range(200):
        base = f"127.{rng.randint(100, 199)}.{rng.randint(1, 250)}"
        try:
            for host in (f"{base}.10", f"{base}.11"):
                with socket.socket() as probe:
                    probe.bind((host, 8883))
        except OSError:
            continue
        return base
    raise RuntimeError("no free loopback block for the stand-in")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class ChaosEdge:
    """The edge's processes, started in order, supervised, and always stopped (`with` block)."""

    def __init__(self, workdir: Path, bundle_dir: Path, ip_base: str) -> None:
        self.workdir = workdir
        self.bundle_dir = bundle_dir
        self.ip_base = ip_base
        self.field_port = free_port()
        self.field_secrets = workdir / "field-secrets"
        self.hub_secrets = workdir / "hub-secrets"  # the sink's users, the stand-in's password (edgehub.hub_auth)
        self.hub_port = free_port()
        self.lake_dir = workdir / "lake"
        self.standin_dir = workdir / "standin"
        self.sink_dir = workdir / "sink"
        self.health_dir = workdir / "health"
        self.deployment = load_deployment(TEMPLATE)
        self.bundle_version = read_manifest(bundle_dir).bundle_version
        self.processes: dict[str, ChaosProcess] = {}
        self.started: list[ChaosProcess] = []  # every process ever started, for the final clean-up
        self._lock = threading.Lock()
        self.supervisor: Supervisor | None = None
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTEDGE_", "EDGEHUB_", "SINK_"))}
        self._base_env["PYTHONUNBUFFERED"] = "1"
        self._base_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), self._base_env.get("PYTHONPATH", "")) if p
        )

    # -- how each process is started and when it counts as ready -----------------------------------

    def health_path(self, name: str) -> Path:
        return self.health_dir / f"{name}.health"

    def _command(self, name: str) -> tuple[list[str], dict[str, str]]:
        env = dict(self._base_env)
        health = str(self.health_path(name))
        if name == FIELD_BROKER:
            argv = [sys.executable, "-m", "field_broker", "--config-dir", str(self.field_secrets)]
            argv += ["--state-dir", str(self.workdir / "field"), "--bind", HOST, "--port", str(self.field_port)]
            return argv, env
        if name == SINK:
            argv = [sys.executable, "-m", "edgehub.sink_service", "--listen", f"{HOST}:{self.hub_port}"]
            argv += ["--lake", str(self.lake_dir), "--state-dir", str(self.sink_dir), "--flush-every-s", "0.5"]
            argv += ["--users-file", str(self.hub_secrets / USERS_FILE)]
            return [*argv, "--health-file", health], env
        if name == STANDIN:
            variables = {
                "BUNDLE_VERSION": self.bundle_version,
                "MODULES.sensor": "edgefleet-sensor:chaos",
                "MODULES.inference": "edgefleet-inference:chaos",
                "MODULES.fieldbroker": "edgefleet-fieldbroker:chaos",  # the manifest's; the field broker runs here
            }
            argv = [
                sys.executable,
                "-m",
                "edgehub",
                "--deployment",
                str(TEMPLATE),
                "--state-dir",
                str(self.standin_dir),
            ]
            argv += ["--ip-base", self.ip_base, "--upstream-mqtt", f"{HOST}:{self.hub_port}", "--health-file", health]
            argv += ["--upstream-password-file", str(hub_password_file(self.hub_secrets, HUB_PUBLISHER_USER))]
            for key, value in variables.items():
                argv += ["--var", f"{key}={value}"]
            return argv, env
        spec = self.deployment.modules[name]
        env.update(spec.env)
        env.update(_read_env_file(self.standin_dir / "modules" / f"{name}.env"))
        env.update(
            {"HEALTH_FILE": health, "REPORT_INTERVAL_S": "0.5", "STATE_DIR": str(self.workdir / f"{name}-state")}
        )
        if name == SENSOR:
            env.update(
                {
                    "FIELD_MQTT_HOST": HOST,
                    "FIELD_MQTT_PORT": str(self.field_port),
                    "FIELD_MQTT_CA_FILE": str(self.field_secrets / CA_FILE),
                    "FIELD_MQTT_USERNAME": SENSOR_USER,
                    "FIELD_MQTT_PASSWORD_FILE": str(client_password_file(self.field_secrets, SENSOR_USER)),
                }
            )
        else:
            env["BUNDLE_DIR"] = str(self.bundle_dir)
        return [sys.executable, "-m", f"modules.{name}"], env

    def start_process(self, name: str) -> ChaosProcess:
        """Start (or restart) one process without waiting; its health file is removed first."""
        self.health_path(name).unlink(missing_ok=True)
        argv, env = self._command(name)
        process = ChaosProcess(name, argv, env, self.workdir / "logs" / f"{name}.log")
        with self._lock:
            self.processes[name] = process
            self.started.append(process)
        return process

    def ready(self, name: str) -> bool:
        """Return whether a process is running and does its job (its own readiness signal)."""
        process = self.processes.get(name)
        if process is None or not process.running():
            return False
        if name == FIELD_BROKER:
            return _port_open(HOST, self.field_port)
        health = self.health_path(name)
        if name in (SENSOR, INFERENCE):
            try:
                return time.time() - health.stat().st_mtime < MODULE_HEALTH_FRESH_S
            except OSError:
                return False
        return health.exists()

    def broker_pid_file(self, target: str) -> Path:
        if target == SINK_BROKER:
            return self.sink_dir / "broker" / "mosquitto-hub.pid"
        return self.standin_dir / "brokers" / f"mosquitto-{STANDIN_BROKERS[target]}.pid"

    def broker_pid(self, target: str) -> int | None:
        """Return the pid of a broker child while it runs (from its parent's pid file)."""
        try:
            pid = int(self.broker_pid_file(target).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and "mosquitto" in _cmdline(pid) else None

    def all_up(self, modules_since_s: float = 0.0) -> bool:
        """Return whether every process is ready, every broker child runs, and modules were healthy since then.

        `modules_since_s` (wall clock): a module's health file touched after it shows the module
        reconnected to a part that came back at that time (it touches it only while connected).
        """
        for module in (SENSOR, INFERENCE):
            try:
                if self.health_path(module).stat().st_mtime < modules_since_s:
                    return False
            except OSError:
                return False
        return all(self.ready(name) for name in PROCESSES) and all(
            self.broker_pid(target) is not None for target in BROKER_PARENTS
        )

    def wait(self, check: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    # -- what the supervisor needs ---------------------------------------------------------------

    def module_process(self, name: str) -> ChaosProcess | None:
        return self.processes.get(name)

    def restart_module(self, name: str) -> ChaosProcess:
        return self.start_process(name)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> ChaosEdge:
        init_field_dir(self.field_secrets)
        ensure_hub_credentials(self.hub_secrets)
        self.health_dir.mkdir(parents=True, exist_ok=True)
        for group in ((FIELD_BROKER, SINK), (STANDIN,), (SENSOR, INFERENCE)):
            for name in group:
                self.start_process(name)
            for name in group:
                if not self.wait(functools.partial(self.ready, name), timeout_s):
                    raise RuntimeError(f"{name} did not start; log {self.workdir / 'logs' / name}.log")
        backoff = Backoff(initial_s=0.1, max_s=0.5, reset_after_s=1.0)
        watches = {
            name: ModuleWatch(name, RestartPolicy.ALWAYS, unhealthy_after_s=1e9, backoff=backoff, start_grace_s=1e9)
            for name in PROCESSES
        }
        self.supervisor = Supervisor(self, watches, interval_s=0.1).start()
        return self

    def stop(self) -> None:
        """Stop in order (modules, stand-in, sink, field broker), then kill anything of ours still running."""
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            supervisor.stop()
        for name in (SENSOR, INFERENCE, STANDIN, SINK, FIELD_BROKER):
            process = self.processes.get(name)
            if process is not None:
                process.stop(timeout_s=30)
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL every process we started and every process whose command line names our workdir."""
        for process in self.started:
            process.kill()
        marker = str(self.workdir.resolve())
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != me and marker in _cmdline(int(entry.name)):
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def __enter__(self) -> ChaosEdge:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- load ----------------------------------------------------------------------------------------------


class Load:
    """A field gateway publishing unique readings at QoS 1; it keeps and resends what was not acknowledged."""

    def __init__(self, port: int, devices: list[str], rate_per_s: float, seed: int, field_secrets: Path) -> None:
        self.devices = devices
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        self.sent_at: dict[tuple[str, int], float] = {}  # key -> seconds since the load started
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._origin = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.client = mqtt.Client(client_id="chaos-field-devices", clean_session=True, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(tls_context(field_secrets / CA_FILE))
        password = PasswordFile.read(client_password_file(field_secrets, GATEWAY_USER)).password
        self.client.username_pw_set(GATEWAY_USER, password.get_secret_value())
        self.client.max_queued_messages_set(50_000)  # below paho's 65,535 message ids
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(HOST, port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _payload(self, device_id: str, seq: int) -> bytes:
        ts = (self._origin + timedelta(seconds=seq)).isoformat().replace("+00:00", "Z")
        features = {name: round(self.rng.gauss(mean, sd), 3) for name, (mean, sd) in FEATURE_RANGES.items()}
        features["load_pct"] = round(min(100.0, max(0.0, self.rng.gauss(50.0, 25.0))), 3)
        body = {"schema": "edgefleet.telemetry/1", "device_id": device_id, "seq": seq, "ts": ts, "features": features}
        return json.dumps(body, separators=(",", ":")).encode()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            delay = index / self.rate_per_s - self.now_s()
            if delay > 0:
                time.sleep(delay)
            device_id = self.devices[index % len(self.devices)]
            seq = index // len(self.devices)
            topic, payload = FIELD_TOPIC.format(device=device_id), self._payload(device_id, seq)
            info = self.client.publish(topic, payload, qos=1)
            while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE and not self._stop.is_set():
                time.sleep(0.01)
                info = self.client.publish(topic, payload, qos=1)
            self.sent_at[(device_id, seq)] = self.now_s()
            self.infos.append(info)
            index += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def unacked(self) -> int:
        # `is_published()` raises for a message published while disconnected; the flag is set on PUBACK.
        return sum(not info._published for info in self.infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the lake ------------------------------------------------------------------------------------------


class LakeWatch:
    """Read new lake files as they appear: which readings have a prediction, which are dead letters."""

    def __init__(self, lake_dir: Path) -> None:
        self.lake_dir = lake_dir
        self.seen: set[Path] = set()
        self.predicted: set[tuple[str, int]] = set()

    def poll(self) -> None:
        for path in sorted(self.lake_dir.glob("date=*/*.parquet")):
            if path in self.seen:
                continue
            self.seen.add(path)
            table = pq.read_table(path, columns=None).to_pandas()
            if PREDICTION_VALUE_COLUMN not in table:
                continue
            rows = table[table[PREDICTION_VALUE_COLUMN].notna()]
            self.predicted.update(zip(rows["device_id"], rows["seq"].astype(int), strict=True))

    def deadlettered(self) -> dict[tuple[str, int], str]:
        return deadletter_keys(self.lake_dir)


def deadletter_keys(lake_dir: Path) -> dict[tuple[str, int], str]:
    """Return the readings named in dead letters, with each one's reason."""
    keys: dict[tuple[str, int], str] = {}
    for record in read_deadletters(lake_dir):
        reason = str(record.get("reason"))
        for device_id, seq in _KEY.findall(str(record.get("payload", "")).encode()):
            keys[(device_id.decode(), int(seq))] = reason
    return keys


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    """What a chaos run did and what it cost."""

    config: ChaosConfig
    kills: list[Kill]
    sent: int
    predicted: int
    deadlettered: int
    deadletter_reasons: dict[str, int]
    lost: int
    lost_after_last_kill: int
    duplicate_predictions: int
    duplicate_raw: int
    unacked_by_field_broker: int
    wall_s: float
    findings: list[str]
    lost_examples: list[tuple[str, int]]

    def by_target(self) -> dict[str, tuple[int, int, int, int]]:
        """Return per target: kills, lost, duplicates, findings."""
        table: dict[str, tuple[int, int, int, int]] = {}
        for kill in self.kills:
            kills, lost, dups, findings = table.get(kill.target, (0, 0, 0, 0))
            table[kill.target] = (kills + 1, lost + kill.lost, dups + kill.duplicates, findings + len(kill.findings))
        return table

    def markdown(self) -> str:
        """Return the figures as markdown tables, ready to paste."""
        c = self.config
        reasons = json.dumps(self.deadletter_reasons) + " " if self.deadlettered else ""
        lines = [
            f"Chaos run: seed {c.seed} (`{SEED_ENV}={c.seed}` reproduces the schedule), {len(self.kills)} kill -9s, "
            f"{c.rate_per_s:.0f} readings/s QoS 1 over {c.devices} devices, wall {self.wall_s:.0f} s",
            "",
            "| figure | value |",
            "| --- | ---: |",
            f"| readings sent (unique device_id, seq) | {self.sent} |",
            f"| in the lake with a prediction | {self.predicted} |",
            f"| dead-lettered | {self.deadlettered} {reasons}|",
            f"| **lost** | **{self.lost}** |",
            f"| lost, published after the last kill | {self.lost_after_last_kill} |",
            f"| duplicate prediction rows (beyond one per reading) | {self.duplicate_predictions} |",
            f"| duplicate raw telemetry rows | {self.duplicate_raw} |",
            f"| never acknowledged by the field broker | {self.unacked_by_field_broker} |",
            "",
            "| killed process | kills | lost | duplicate predictions | findings |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for target, (kills, lost, dups, findings) in sorted(self.by_target().items()):
            lines.append(f"| {target} | {kills} | {lost} | {dups} | {findings} |")
        lines += [
            "",
            "| # | at (s) | killed | back after (s) | lost | dup | note |",
            "| ---: | ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for kill in self.kills:
            back = f"{kill.back_after_s:.1f}" if kill.back_after_s is not None else "-"
            note = "; ".join(kill.findings)
            cells = (kill.index, f"{kill.at_s:.1f}", kill.target, back, kill.lost, kill.duplicates, note)
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        if self.findings:
            lines += ["", "Findings:", *(f"- {finding}" for finding in self.findings)]
        if self.lost_examples:
            shown = ", ".join(f"{d}#{s}" for d, s in self.lost_examples)
            lines += ["", f"First lost readings: {shown}"]
        return "\n".join(lines)


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


class Chaos:
    """Kill one target at a time on a seeded schedule and wait for the edge to come back each time."""

    def __init__(self, edge: ChaosEdge, load: Load, config: ChaosConfig, rng: random.Random) -> None:
        self.edge = edge
        self.load = load
        self.config = config
        self.rng = rng
        self.kills: list[Kill] = []
        self.findings: list[str] = []

    def run(self) -> None:
        for index in range(1, self.config.kills + 1):
            target = self.rng.choice(self.config.targets)
            pause_s = self.rng.uniform(*self.config.pause_s)
            if not self.kill(index, target):
                return
            time.sleep(pause_s)

    def kill(self, index: int, target: str) -> bool:
        """Kill one target and wait until the edge is back; False when it did not come back."""
        edge = self.edge
        if target in BROKER_PARENTS:
            pid = edge.broker_pid(target)
        else:
            process = edge.processes[target]
            pid = process.pid if process.running() else None
        if pid is None:
            self.findings.append(f"kill {index}: {target} was not running when its turn came")
            return False
        kill = Kill(index, target, pid, self.load.now_s())
        self.kills.append(kill)
        logger.info("Kill %d: kill -9 %s (pid %d) at %.1f s", index, target, pid, kill.at_s)
        started = time.monotonic()
        _kill_pid(pid)
        if target in BROKER_PARENTS:
            self._wait_broker_back(kill, pid)
        else:
            edge.wait(lambda: edge.processes[target].pid != pid and edge.ready(target), self.config.back_timeout_s)
        back_s = time.time()
        if not edge.wait(lambda: edge.all_up(back_s), self.config.back_timeout_s):
            down = [name for name in PROCESSES if not edge.ready(name)]
            down += [t for t in BROKER_PARENTS if edge.broker_pid(t) is None]
            kill.findings.append(f"the edge was not back within {self.config.back_timeout_s:.0f} s: {', '.join(down)}")
            self.findings.append(f"kill {index} ({target}): {kill.findings[-1]}; chaos stopped")
            return False
        kill.back_after_s = time.monotonic() - started
        return True

    def _wait_broker_back(self, kill: Kill, pid: int) -> None:
        """Wait for the parent to restart its broker; else kill -9 the parent (the supervisor restarts it)."""
        edge, target = self.edge, kill.target

        def restarted() -> bool:
            new = edge.broker_pid(target)
            return new is not None and new != pid

        if edge.wait(restarted, self.config.broker_restart_timeout_s):
            return
        parent = BROKER_PARENTS[target]
        note = (
            f"not restarted by {parent} within {self.config.broker_restart_timeout_s:.0f} s; "
            f"recovered by kill -9 of {parent}"
        )
        kill.findings.append(note)
        self.findings.append(f"kill {kill.index} ({target}): {note}")
        _kill_pid(edge.processes[parent].pid)


def blame(kills: list[Kill], published_s: float) -> Kill | None:
    """Return the kill a reading published at `published_s` is blamed on (None: after the last kill).

    A reading published while a killed part was down (from its kill until the edge was back) is
    blamed on that kill; any other on the first kill after it was published, the earliest that
    could have lost it (from a buffer, an unsaved broker queue, an unacknowledged batch).
    """
    for kill in reversed(kills):
        end_s = kill.at_s + kill.back_after_s if kill.back_after_s is not None else float("inf")
        if kill.at_s <= published_s <= end_s:
            return kill
    return next((kill for kill in kills if kill.at_s >= published_s), None)


def attribute(
    kills: list[Kill], keys: list[tuple[str, int]], sent_at: Mapping[tuple[str, int], float], what: str
) -> int:
    """Count each reading against the kill it is blamed on; return how many came after the last kill."""
    after_last = 0
    for key in keys:
        owner = blame(kills, sent_at[key])
        if owner is None:
            after_last += 1
        elif what == "lost":
            owner.lost += 1
        else:
            owner.duplicates += 1
    return after_last


def _duplicates(lake_dir: Path) -> tuple[Counter[tuple[str, int]], int]:
    """Return extra prediction rows per reading, and the number of extra raw telemetry rows."""
    rows = read_lake(lake_dir, keep_duplicates=True)
    if rows.empty:
        return Counter(), 0
    predicted = rows[rows[PREDICTION_VALUE_COLUMN].notna()] if PREDICTION_VALUE_COLUMN in rows else rows.iloc[:0]
    counts = Counter(zip(predicted["device_id"], predicted["seq"].astype(int), strict=True))
    extra = Counter({key: n - 1 for key, n in counts.items() if n > 1})
    raw = rows[rows[SOURCE_COLUMN] == SENSOR]
    return extra, len(raw) - len(raw.drop_duplicates(["device_id", "seq"]))


def _drain(watch: LakeWatch, sent: set[tuple[str, int]], config: ChaosConfig) -> None:
    """Wait until every sent reading landed, or the lake stopped growing for `drain_quiet_s`."""
    deadline = time.monotonic() + config.drain_timeout_s
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        watch.poll()
        landed = watch.predicted | set(watch.deadlettered())
        if sent <= landed:
            return
        if len(landed) != last_count:
            last_count, quiet_since = len(landed), time.monotonic()
        elif time.monotonic() - quiet_since > config.drain_quiet_s:
            return
        time.sleep(1.0)


def run_chaos(
    workdir: Path, bundle_dir: Path, config: ChaosConfig, say: Callable[[str], None] = logger.info
) -> ChaosReport:
    """Run the edge under load and chaos, then account for every reading; nothing is left running."""
    started = time.monotonic()
    rng = random.Random(config.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    edge = ChaosEdge(workdir.resolve(), bundle_dir, pick_ip_base(random.Random(os.getpid() + time.time_ns())))
    devices = sorted(read_manifest(bundle_dir).devices)[: config.devices]
    devices += [f"chaos-{i:02d}" for i in range(config.devices - len(devices))]
    with edge:
        say(f"edge up in {time.monotonic() - started:.1f} s (workdir {workdir}); seed {config.seed}")
        load = Load(edge.field_port, devices, config.rate_per_s, config.seed, edge.field_secrets).start()
        chaos = Chaos(edge, load, config, rng)
        try:
            time.sleep(config.warmup_s)
            chaos.run()
            time.sleep(config.tail_s)
        finally:
            load.stop()
        say(f"{len(chaos.kills)} kills done at {load.now_s():.0f} s; {len(load.sent_at)} readings sent; draining")
        edge.wait(lambda: load.unacked() == 0, 60)
        unacked = load.unacked()
        load.close()
        watch = LakeWatch(edge.lake_dir)
        sent = set(load.sent_at)
        _drain(watch, sent, config)
    # Everything stopped with SIGTERM: the sink wrote what it buffered. Now the final word.
    lake = read_lake(edge.lake_dir)
    predicted_rows = lake[lake[PREDICTION_VALUE_COLUMN].notna()] if PREDICTION_VALUE_COLUMN in lake else lake.iloc[:0]
    predicted = set(zip(predicted_rows["device_id"], predicted_rows["seq"].astype(int), strict=True)) & sent
    deadlettered = {key: reason for key, reason in deadletter_keys(edge.lake_dir).items() if key in sent}
    lost = sorted(sent - predicted - set(deadlettered), key=lambda key: load.sent_at[key])
    lost_after = attribute(chaos.kills, lost, load.sent_at, "lost")
    extra, duplicate_raw = _duplicates(edge.lake_dir)
    dup_keys = [key for key, n in extra.items() if key in load.sent_at for _ in range(n)]
    attribute(chaos.kills, dup_keys, load.sent_at, "dup")
    return ChaosReport(
        config=config,
        kills=chaos.kills,
        sent=len(sent),
        predicted=len(predicted),
        deadlettered=len(deadlettered),
        deadletter_reasons=dict(Counter(deadlettered.values())),
        lost=len(lost),
        lost_after_last_kill=lost_after,
        duplicate_predictions=sum(extra.values()),
        duplicate_raw=duplicate_raw,
        unacked_by_field_broker=unacked,
        wall_s=time.monotonic() - started,
        findings=chaos.findings,
        lost_examples=lost[:10],
    )


def seed_from_env(default: int) -> int:
    """Return the seed to use: `EDGEFLEET_CHAOS_SEED` when set (to reproduce a run), else `default`."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value else default


def report_json(report: ChaosReport) -> dict[str, Any]:
    """Return the figures as one JSON object (for the last line of the CLI's output)."""
    return {
        "seed": report.config.seed,
        "kills": len(report.kills),
        "sent": report.sent,
        "predicted": report.predicted,
        "deadlettered": report.deadlettered,
        "lost": report.lost,
        "duplicate_predictions": report.duplicate_predictions,
        "duplicate_raw": report.duplicate_raw,
        "wall_s": round(report.wall_s, 1),
        "lost_by_target": {t: v[1] for t, v in report.by_target().items()},
        "findings": report.findings,
    }
