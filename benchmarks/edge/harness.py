"""The edge benchmark's harness: child processes, CPU and memory, arrivals, the field publisher, edges."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.deployment import Deployment
from edgefleet.envelope import open_body
from edgefleet.messages import iot_hub_message_bytes, units_4kb
from edgefleet.routes import Message
from edgefleet_cli.local_edge import FieldEndpoint, LocalEdge
from edgefleet_cli.process_cpu import cpu_seconds, descendants

CHILD = Path(__file__).resolve().parents[1] / "_edge_bench_util.py"
PREDICTION_MARK = b'"prediction":'  # once per prediction object in a batch envelope
READING_MARK = b'"seq":'  # once per reading object

_children: list[subprocess.Popen[str]] = []  # every child we start, killed at exit if still running


def say(message: str) -> None:
    """Print one progress line of the report right away."""
    print(message, flush=True)


def fmt(value: Any) -> str:
    """Format one figure for the human-readable report."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


# -- processes and CPU time ---------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (VmRSS, VmHWM) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def mosquitto_children() -> list[int]:
    """Return the pids of the Mosquitto processes this benchmark started (the field broker's runs below its wrapper)."""
    return [process.pid for process in descendants() if process.name == "mosquitto"]


class CpuMeter:
    """CPU seconds per process between `start()` and `stop()` (10 ms resolution)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "bench (router, sink)": os.getpid()}
        self.brokers = mosquitto_children()
        self._before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["mosquitto (all)"] = sum(cpu_seconds(pid) for pid in self.brokers)
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Return CPU seconds used per process since `start()`, plus `extra` (children that report their own)."""
        after = self._sample()
        used = {name: after[name] - self._before[name] for name in after}
        used.update(extra or {})
        return used


def spawn_child(args: list[str]) -> subprocess.Popen[str]:
    """Start a `_edge_bench_util.py` child and wait for its `ready` line."""
    # stderr to a file, not a pipe nobody reads: a chatty child would block once the pipe is full.
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        _children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            child.kill()
            child.wait(5)
            stderr.seek(0)
            raise RuntimeError(f"benchmark child {args[0]} did not start: {line}{stderr.read()[-2000:]}")
    return child


def stop_children() -> None:
    """Kill every child still running (an error or Ctrl-C left it behind)."""
    for child in _children:
        if child.poll() is None:
            child.kill()
            child.wait(5)


# -- arrivals -----------------------------------------------------------------------------------------


class Arrivals:
    """Count readings arriving at the end of a path, remember the last arrival, optionally keep the bodies."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        self.last_arrival_s = 0.0
        self._kept: list[tuple[float, bytes]] | None = None

    def add(self, count: int, body: bytes) -> None:
        """Record one message carrying `count` readings (called on a network or router thread)."""
        now = time.time()
        with self._cond:
            self.count += count
            self.last_arrival_s = now
            if self._kept is not None:
                self._kept.append((now, body))
            self._cond.notify_all()

    def keep(self) -> None:
        """Start keeping bodies with their arrival times (for latency)."""
        with self._cond:
            self._kept = []

    def kept(self) -> list[tuple[float, bytes]]:
        """Stop keeping bodies and return those kept."""
        with self._cond:
            kept, self._kept = self._kept or [], None
            return kept

    def wait(self, total: int, timeout_s: float) -> bool:
        """Wait until `total` readings have arrived since the start; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.count < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True


class Upstream:
    """The stand-in's `Upstream` (`edgehub.upstream`): counts predictions; meters; notes anything unexpected.

    It runs on the router's upstream thread, in this process, so it only opens a compressed body
    (zlib, in C), counts (a C-level scan of the body) and appends: bodies are parsed after the run,
    not on the measured path. Every message is metered as IoT Hub bills it
    (`edgefleet.messages.iot_hub_message_bytes`: the body as sent, compressed or not, plus properties).
    """

    def __init__(self) -> None:
        self.predictions = Arrivals()
        self.other: Counter[str] = Counter()  # dead letters, alerts: a sign that something went wrong
        self.metered: Counter[str] = Counter()  # messages, bytes, units_4kb: everything upstream since reset

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        size = iot_hub_message_bytes(message.body, message.properties, message.system_properties)
        self.metered.update({"messages": 1, "bytes": size, "units_4kb": units_4kb(size)})
        if message.connection_module_id == "inference" and message.output == "predictions":
            body = open_body(message.body, message.system_properties)
            self.predictions.add(body.count(PREDICTION_MARK), body)
        elif not (message.connection_module_id == "sensor" and message.output == "telemetry"):
            self.other[f"{message.connection_module_id}/{message.output}"] += 1
        if on_durable is not None:  # counted is all this upstream does with a message
            on_durable()

    def take_metered(self) -> dict[str, int]:
        """Return what was metered upstream since the last call, and start again."""
        metered, self.metered = dict(self.metered), Counter()
        return metered

    def stats(self) -> dict[str, int]:
        return dict(self.other)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the counts are read after the run."""


# -- the field publisher ------------------------------------------------------------------------------


@dataclass
class Published:
    """What a publisher child reported about one job."""

    devices: list[str]
    seq_start: int
    first_publish_s: float
    last_publish_s: float
    acked_s: float
    cpu_s: float
    sent_s: list[float] | None = None

    def sent_times(self) -> Iterator[tuple[tuple[str, int], float]]:
        """Yield ((device_id, seq), publish time) of every reading (_edge_bench_util.reading_key's order)."""
        assert self.sent_s is not None
        n_devices = len(self.devices)
        for index, sent in enumerate(self.sent_s):
            yield (self.devices[index % n_devices], self.seq_start + index // n_devices), sent


class FieldDevices:
    """Publish jobs of readings to one broker, keeping every (device, seq) unique.

    The sensor drops a seq it has seen recently as a QoS 1 redelivery, so each job continues
    every device's seq where the previous job on the same edge stopped.
    """

    def __init__(
        self,
        workdir: Path,
        host: str,
        port: int,
        topic: str = "fleet/{device}/telemetry",
        login: FieldEndpoint | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.topic = topic
        self.login = login  # the secure field broker's CA and gateway identity; None: a plain broker
        self.next_seq = 1  # seq 0 reads as a device restart to the sensor
        self._jobs = 0

    def publish(
        self,
        devices: list[str],
        readings: int,
        *,
        rate_per_s: float = 0.0,
        keep_times: bool = False,
        before_go: Callable[[], None] | None = None,
    ) -> Published:
        """Run one publisher child: `readings` round-robin over `devices`; return once the broker acked all."""
        self._jobs += 1
        seq_start = self.next_seq
        self.next_seq += math.ceil(readings / len(devices)) + 1
        name = f"publish-{os.getpid()}-{id(self)}-{self._jobs}"
        config_path = self.workdir / f"{name}.json"
        times_path = self.workdir / f"{name}-times.json"
        config = {
            "host": self.host,
            "port": self.port,
            "client_id": f"edge-bench-{name}",
            "devices": devices,
            "readings": readings,
            "seq_start": seq_start,
            "rate_per_s": rate_per_s,
            "topic": self.topic,
            "times_path": str(times_path) if keep_times else None,
        }
        login = self.login
        if login is not None and login.ca_file is not None:
            config.update(ca_file=str(login.ca_file), username=login.username, password_file=str(login.password_file))
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config))
        child = spawn_child(["publish", str(config_path)])
        assert child.stdin is not None and child.stdout is not None
        if before_go is not None:
            before_go()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        child.wait(30)
        if not line:
            raise RuntimeError(f"the publisher child exited with {child.returncode} before reporting")
        summary = json.loads(line)
        return Published(
            devices=devices,
            seq_start=seq_start,
            first_publish_s=summary["first_publish_s"],
            last_publish_s=summary["last_publish_s"],
            acked_s=summary["acked_s"],
            cpu_s=summary["cpu_s"],
            sent_s=json.loads(times_path.read_text()) if keep_times else None,
        )


# -- edges --------------------------------------------------------------------------------------------


class IpBlocks:
    """Hand out loopback blocks for stand-ins: brokers bind port 8883 on them, so a run never reuses one."""

    def __init__(self) -> None:
        # Offset by pid so that two runs (or a test run, which uses 127.200-249.x) do not collide.
        self.second = 150 + os.getpid() % 40
        self.third = 0

    def next(self) -> str:
        self.third += 1
        return f"127.{self.second}.{self.third}"


@dataclass
class EdgeSession:
    """A running LocalEdge with its upstream callback and field publisher."""

    edge: LocalEdge
    upstream: Upstream
    field: FieldDevices

    def pid(self, module: str) -> int:
        process = self.edge.processes[module].process
        assert process is not None
        return process.pid

    def stats(self, module: str) -> dict[str, Any]:
        status, payload = self.edge.method(module, "stats", timeout_s=30.0)
        if status != 200:
            raise RuntimeError(f"{module} stats answered {status}: {payload}")
        return dict(payload)

    def reset(self) -> None:
        """Zero both modules' counters and the upstream meter (before a measured run)."""
        for module in self.edge.modules:
            self.edge.method(module, "reset", timeout_s=30.0)
        self.upstream.take_metered()


@contextmanager
def running_edge(
    workdir: Path, deployment: Deployment, bundle_dir: Path, bundle_version: str, ip_base: str, predictor: str
) -> Iterator[EdgeSession]:
    """Start a LocalEdge whose inference module runs `predictor`; always stop everything it started."""
    upstream = Upstream()
    edge = LocalEdge(
        workdir,
        deployment,
        bundle_dir=bundle_dir,
        ip_base=ip_base,
        desired_overrides={"inference": {"expectedBundleVersion": bundle_version}},
        module_env={"inference": {"PREDICTOR": predictor}},
        upstream=upstream,
    )
    try:
        edge.start()  # inside the try: a module that fails to start would leave the brokers running
        field = FieldDevices(workdir, "127.0.0.1", edge.field_port, login=edge.field_endpoint())
        yield EdgeSession(edge, upstream, field)
    finally:
        edge.stop()
