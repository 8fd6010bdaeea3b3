"""`edgefleet up`: the whole edge on this machine with a live status table, until Ctrl-C or a deadline.

The edge is `LocalEdge` (field broker, edgeHub stand-in with the IoT Hub lake sink, sensor and
inference as processes); the optional simulator runs in this process on its own thread. Status
comes from the modules' `stats` direct methods, the same numbers their twins report.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgefleet_cli.local_edge import FieldEndpoint, LocalEdge
from edgefleet_cli.supervisor import ModuleStatus, Phase, describe_exit

if TYPE_CHECKING:
    from simulator.profile import SimulatorProfile
    from simulator.report import SimulationReport

logger = logging.getLogger(__name__)

__all__ = [
    "Snapshot",
    "StartInterrupted",
    "UpResult",
    "module_summary",
    "poll",
    "run_up",
    "simulate_on",
    "start_edge",
    "status_table",
]

STATUS_INTERVAL_S = 1.0
DRAIN_QUIET_S = 2.0  # the edge is drained when nothing moved for this long
DRAIN_TIMEOUT_S = 60.0

# A simulation: gets how the gateway identity reaches the field broker and a stop event, returns its report.
Simulation = Callable[[FieldEndpoint, threading.Event], "SimulationReport"]


def simulate_on(
    endpoint: FieldEndpoint, profile: SimulatorProfile, stop: threading.Event, **kwargs: Any
) -> SimulationReport:
    """Run the simulator against the local field broker: as its gateway identity over TLS (plain on the dev broker).

    `kwargs` go to `simulator.run.run_simulation` (duration_s, on_progress, ...).
    """
    from simulator.profile import with_overrides
    from simulator.run import run_simulation

    if endpoint.ca_file is not None:
        login = {
            "tls_ca_file": endpoint.ca_file,
            "username": endpoint.username,
            "password_file": endpoint.password_file,
            "password": None,  # the edge's password file replaces a profile's password
        }
        profile = with_overrides(profile, mqtt=login)
    return run_simulation(profile, stop, host=endpoint.host, port=endpoint.port, **kwargs)


@dataclass
class Snapshot:
    """One poll of every part's counters."""

    at_s: float
    sensor: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, int] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, ModuleStatus] = field(default_factory=dict)
    broker_restarts: dict[str, int] = field(default_factory=dict)

    def moved_since(self, other: Snapshot) -> bool:
        """Return whether any counter changed since `other`."""
        return (
            self.sensor.get("readings") != other.sensor.get("readings")
            or self.inference.get("predictions") != other.inference.get("predictions")
            or self.sink.get("messages") != other.sink.get("messages")
            or self.sensor.get("open_batch_readings", 0) > 0
            or (self.inference.get("outbox") or {}).get("pending", 0) > 0
            # A module coming back will still process what waits for it at edgeHub.
            or any(status.phase is Phase.RESTARTING for status in self.modules.values())
        )


@dataclass
class UpResult:
    """What a run of the edge did: the last counters, the simulator's report, timings."""

    first: Snapshot
    last: Snapshot
    simulation: SimulationReport | None = None
    duration_s: float = 0.0
    interrupted: bool = False

    def modules_down(self) -> list[ModuleStatus]:
        """Return the modules that were not running (healthy) at the end."""
        return [status for status in self.last.modules.values() if not status.up]


def poll(edge: LocalEdge, simulator_progress: dict[str, Any] | None = None) -> Snapshot:
    """Read every module's counters (a module that does not answer shows as empty)."""
    snapshot = Snapshot(
        time.monotonic(),
        simulator=dict(simulator_progress or {}),
        modules=edge.module_statuses(),
        broker_restarts=edge.broker_restarts(),
    )
    for module in edge.modules:
        state = snapshot.modules.get(module)
        if state is not None and state.phase in (Phase.RESTARTING, Phase.DOWN, Phase.STOPPED):
            continue  # no process to ask: do not wait for the method's timeout
        try:
            status, payload = edge.method(module, "stats", timeout_s=3.0)
        except Exception as err:  # restarting or gone: show it, keep going
            logger.debug("stats of %s failed: %s", module, err)
            continue
        if status == 200 and isinstance(payload, dict):
            setattr(snapshot, module, payload)
    sink = edge.lake_sink
    if sink is not None:
        snapshot.sink = sink.stats()
    return snapshot


def _rate(now: Snapshot, before: Snapshot, pick: Callable[[Snapshot], float]) -> float:
    elapsed = now.at_s - before.at_s
    return (pick(now) - pick(before)) / elapsed if elapsed > 0 else 0.0


def status_table(now: Snapshot, before: Snapshot) -> Table:
    """Return the live table: per part, state, restarts, rate, totals, dead letters, fallbacks, latency."""
    table = Table(title="edgefleet edge", expand=False)
    numeric = ("restarts", "rate/s", "total", "dead letters")
    for column in ("part", "state", "restarts", "last exit", "rate/s", "total", "dead letters", "details"):
        table.add_column(column, justify="right" if column in numeric else "left")
    if now.simulator:
        sent = float(now.simulator.get("sent", 0))
        rate = _rate(now, before, lambda s: float(s.simulator.get("sent", 0)))
        table.add_row(
            "simulator", "", "", "", f"{rate:,.0f}", f"{sent:,.0f}", "", "readings published to the field broker"
        )
    for module, counters in (
        ("sensor", _sensor_counters(now, before)),
        ("inference", _inference_counters(now, before)),
    ):
        status = now.modules.get(module)
        if status is None and not counters:
            continue
        state = _state_cells(status)
        table.add_row(module, *state, *(counters or ("", "", "", "no answer")))
    if now.broker_restarts:
        restarted = [f"{name} {count}" for name, count in now.broker_restarts.items() if count]
        details = "restarted after dying: " + ", ".join(restarted) if restarted else "field and edgeHub brokers"
        total = str(sum(now.broker_restarts.values()))
        table.add_row("brokers", "", total, "", "", "", "", details)
    if now.sink:
        rate = _rate(now, before, lambda s: float(s.sink.get("rows_received", 0)))
        details = f"{now.sink.get('rows_written', 0):,} rows written · {now.sink.get('files_written', 0)} files"
        table.add_row(
            "upstream → lake",
            "",
            "",
            "",
            f"{rate:,.0f}",
            f"{now.sink.get('rows_received', 0):,}",
            f"{now.sink.get('deadletters', 0):,}",
            details,
        )
    return table


def _state_cells(status: ModuleStatus | None) -> tuple[Text, str, str]:
    """Return the state, restart count and last exit of a module, the state coloured when it is not running."""
    if status is None:
        return Text(""), "", ""
    style = "" if status.up else "bold red" if status.phase in (Phase.DOWN, Phase.UNHEALTHY) else "yellow"
    return Text(status.describe(), style=style), str(status.restarts), describe_exit(status.last_exit)


def _sensor_counters(now: Snapshot, before: Snapshot) -> tuple[str, str, str, str] | None:
    sensor = now.sensor
    if not sensor:
        return None
    rate = _rate(now, before, lambda s: float(s.sensor.get("readings", 0)))
    dead = sum((sensor.get("deadletters") or {}).values())
    details = (
        f"dup {sensor.get('seq_duplicates', 0)} · missing {sensor.get('seq_missing', 0)} · "
        f"late {sensor.get('seq_late', 0)} · {'connected' if sensor.get('field_connected') else 'DISCONNECTED'}"
    )
    return f"{rate:,.0f}", f"{sensor.get('readings', 0):,}", f"{dead:,}", details


def _inference_counters(now: Snapshot, before: Snapshot) -> tuple[str, str, str, str] | None:
    inference = now.inference
    if not inference:
        return None
    rate = _rate(now, before, lambda s: float(s.inference.get("predictions", 0)))
    dead = sum((inference.get("deadletters") or {}).values())
    latency = inference.get("latency") or {}
    fallbacks = ", ".join(f"{k} {v:,}" for k, v in sorted((inference.get("fallbacks") or {}).items()))
    details = f"p50 {latency.get('p50_ms')} ms · p99 {latency.get('p99_ms')} ms · fleet: {fallbacks or 'none'}"
    return f"{rate:,.0f}", f"{inference.get('predictions', 0):,}", f"{dead:,}", details


def module_summary(statuses: dict[str, ModuleStatus]) -> list[str]:
    """Return one line per module for the end of a run: state, restarts, last exit."""
    return [
        f"{name}: {status.describe()}, {status.restarts} restart(s), last exit {describe_exit(status.last_exit)}"
        for name, status in statuses.items()
    ]


class StartInterrupted(KeyboardInterrupt):
    """Raise in the main thread when SIGTERM or SIGINT arrives while the edge starts."""


def start_edge(edge: LocalEdge, stop_event: threading.Event) -> None:
    """Start the edge; a SIGTERM or SIGINT meanwhile aborts the start (which stops what it started).

    Call from the main thread. The signal also sets `stop_event`; the handlers in place before are
    restored afterwards. Only the first signal raises, and none while the edge is being stopped,
    so the cleanup itself is never cut short.
    """
    raised = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal raised
        stop_event.set()
        if raised or edge.stopping:
            return
        raised = True
        raise StartInterrupted(f"{signal.Signals(signum).name} while the edge was starting")

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        edge.start()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_up(
    edge: LocalEdge,
    stop_event: threading.Event,
    *,
    duration_s: float | None = None,
    simulation: Simulation | None = None,
    simulator_progress: dict[str, Any] | None = None,
    console: Console | None = None,
    live: bool = True,
) -> UpResult:
    """Run a started edge until `stop_event`, the deadline or the simulation's end; then drain it."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    first = poll(edge, simulator_progress)
    result = UpResult(first, first)
    sim_stop = threading.Event()
    sim_thread: threading.Thread | None = None
    if simulation is not None:

        def simulate() -> None:
            try:
                result.simulation = simulation(edge.field_endpoint(), sim_stop)
            except Exception:
                logger.exception("The simulator failed")

        sim_thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        sim_thread.start()

    def finished() -> bool:
        if stop_event.is_set():
            result.interrupted = True
            return True
        if duration_s is not None and time.monotonic() - started >= duration_s:
            return True
        return sim_thread is not None and not sim_thread.is_alive()

    def view(now: Snapshot) -> Group:
        elapsed = time.monotonic() - started
        footer = Text(f"{elapsed:,.0f} s · lake {edge.lake_dir} · Ctrl-C stops cleanly", style="dim")
        return Group(status_table(now, result.last), footer)  # rates since the previous poll

    screen: Live | _NoLive = Live(view(first), console=console, refresh_per_second=2) if live else _NoLive()
    try:
        with screen:
            while not finished():
                stop_event.wait(STATUS_INTERVAL_S)
                now = poll(edge, simulator_progress)
                screen.update(view(now))
                result.last = now
            sim_stop.set()
            if sim_thread is not None:
                sim_thread.join(DRAIN_TIMEOUT_S)
            _drain(edge, result, simulator_progress, lambda now: screen.update(view(now)))
    finally:
        sim_stop.set()  # on an error too: the simulator must not outlive the edge
    result.duration_s = time.monotonic() - started
    return result


def _drain(
    edge: LocalEdge,
    result: UpResult,
    simulator_progress: dict[str, Any] | None,
    show: Callable[[Snapshot], object],
) -> None:
    """Let what is on its way arrive: return when nothing moved (and no module restarted) for DRAIN_QUIET_S."""
    quiet_since = time.monotonic()
    deadline = quiet_since + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = poll(edge, simulator_progress)
        show(now)
        if now.moved_since(result.last):
            quiet_since = time.monotonic()
        result.last = now
        if time.monotonic() - quiet_since >= DRAIN_QUIET_S:
            return


class _NoLive:
    """Stand-in for rich's Live when output is not a terminal."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, renderable: RenderableType) -> None:
        """Ignore updates."""
