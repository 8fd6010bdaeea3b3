"""Run a simulation (or a replay) against an MQTT broker and return its report.

The stream decides what is sent (deterministically); this module decides when: each emission
goes out at `start + offset_s / speed` of wall-clock time (at once with speed 0), never faster
than the profile's rate cap. When the publisher falls behind it sends as fast as it can and
the readings keep their scheduled timestamps. A stop request ends generation; what devices
still hold (a burst, a reordered reading) is sent, then the broker's acknowledgements are
awaited (bounded by `mqtt.drain_timeout_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.messages import format_ts
from simulator.fleet import FleetPlan
from simulator.profile import MqttSettings, SimulatorProfile
from simulator.publisher import MqttPublisher
from simulator.replay import read_replay
from simulator.report import ReportBuilder, SimulationReport, totals, write_report
from simulator.stream import FAULT_TYPES, Emission, TelemetryStream

logger = logging.getLogger(__name__)

__all__ = ["ProgressCallback", "run_replay", "run_simulation"]

ProgressCallback = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_S = 1.0
# Sleep only when more than this ahead of schedule: shorter sleeps overshoot, and sending a few
# messages early keeps the average rate right.
_SLEEP_THRESHOLD_S = 0.001
# The rate cap is a token bucket: after a stall it may catch up with at most this much burst.
_CAP_BURST_S = 0.05
_LAG_WARNING_S = 1.0


@dataclass(frozen=True, slots=True)
class _PumpResult:
    stopped_early: bool
    unsent: int
    max_lag_s: float
    publish_s: float


def run_simulation(
    profile: SimulatorProfile,
    stop_event: threading.Event,
    *,
    host: str | None = None,
    port: int | None = None,
    duration_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    speed: float | None = None,
    start_ts: datetime | None = None,
    report_path: Path | None = None,
) -> SimulationReport:
    """Publish the profile's fleet until its duration ends or `stop_event` is set; return the report."""
    # host/port override the profile's broker, duration_s its duration, speed its pacing. Everything
    # generated is published and acknowledged (at most mqtt.drain_timeout_s) before this returns.
    stream = TelemetryStream.from_profile(profile, duration_s=duration_s, start_ts=start_ts)
    plan = stream.plan
    logger.info(
        "Simulating %d devices at %.0f readings/s for %s to %s",
        len(plan.devices),
        plan.rate_per_s,
        f"{plan.duration_s:g} s" if plan.duration_s is not None else "until stopped",
        f"{host or profile.mqtt.host}:{port or profile.mqtt.port}",
    )
    report = _run(
        stream,
        stream.flush,
        profile.mqtt,
        stop_event,
        host=host,
        port=port,
        speed=profile.speed if speed is None else speed,
        rate_cap_per_s=profile.rate_cap_per_s,
        on_progress=on_progress,
        describe=lambda: _simulation_fields(stream, plan),
        mode="simulate",
    )
    if report_path is not None:
        write_report(report, report_path)
    return report


def run_replay(
    path: Path,
    stop_event: threading.Event,
    *,
    profile: SimulatorProfile | None = None,
    mqtt: MqttSettings | None = None,
    host: str | None = None,
    port: int | None = None,
    speed: float | None = None,
    on_progress: ProgressCallback | None = None,
    report_path: Path | None = None,
) -> SimulationReport:
    """Replay a recorded CSV/JSON Lines file at its original pacing × `speed` (0: as fast as allowed)."""
    settings = mqtt or (profile.mqtt if profile is not None else MqttSettings())
    emissions = read_replay(Path(path), topic_template=settings.topic_template)
    report = _run(
        emissions,
        list,
        settings,
        stop_event,
        host=host,
        port=port,
        speed=speed if speed is not None else (profile.speed if profile is not None else 1.0),
        rate_cap_per_s=profile.rate_cap_per_s if profile is not None else None,
        on_progress=on_progress,
        describe=lambda: {"source": str(path)},
        mode="replay",
    )
    if report_path is not None:
        write_report(report, report_path)
    return report


def _simulation_fields(stream: TelemetryStream, plan: FleetPlan) -> dict[str, Any]:
    return {
        "seed": plan.seed,
        "start_ts": plan.start_ts_text(),
        "end_ts": format_ts(plan.start_ts + timedelta(seconds=round(stream.reached_s(), 3))),
        "planned_duration_s": plan.duration_s,
        "drift": tuple(event.to_json_obj() for event in plan.drift),
        "stats": stream.device_stats(),
        "fault_totals": stream.fault_totals(),
    }


def _run(
    emissions: Iterable[Emission],
    flush: Callable[[], Iterable[Emission]],
    settings: MqttSettings,
    stop_event: threading.Event,
    *,
    host: str | None,
    port: int | None,
    speed: float,
    rate_cap_per_s: float | None,
    on_progress: ProgressCallback | None,
    describe: Callable[[], dict[str, Any]],
    mode: str,
) -> SimulationReport:
    """Connect, pump the emissions, drain, disconnect and build the report."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    builder = ReportBuilder()
    publisher = MqttPublisher(settings, host=host, port=port, stop_event=stop_event)
    if publisher.connect():
        try:
            pumped = _pump(
                iter(emissions), flush, publisher, builder, stop_event, speed, rate_cap_per_s, on_progress, started
            )
            drain_s = publisher.drain()
        finally:
            publisher.close()
    else:  # stopped before the broker answered: nothing was generated or sent
        pumped, drain_s = _PumpResult(stopped_early=True, unsent=0, max_lag_s=0.0, publish_s=0.0), 0.0
    elapsed_s = time.monotonic() - started
    fields = describe()
    stats = fields.pop("stats", ())
    fault_totals = fields.pop("fault_totals", dict.fromkeys(FAULT_TYPES, 0))
    devices = builder.device_reports(stats)
    delivery = {
        **publisher.counters(),
        "unsent": pumped.unsent,
        "max_lag_s": round(pumped.max_lag_s, 4),
        "publish_s": round(pumped.publish_s, 4),
        "drain_s": round(drain_s, 4),
    }
    report = SimulationReport(
        mode=mode,
        started_at=started_at,
        elapsed_s=elapsed_s,
        stopped_early=pumped.stopped_early,
        mqtt={
            "host": publisher.host,
            "port": publisher.port,
            "tls": settings.tls_ca_file is not None,
            "qos": settings.qos,
            "client_id": settings.client_id,
            "topic_template": settings.topic_template,
        },
        # The rate counts until the broker acknowledged everything: paho's queue alone is no delivery.
        totals=totals(devices, fault_totals, pumped.publish_s + drain_s),
        delivery=delivery,
        expected_at_edge=builder.expected_at_edge(),
        devices=devices,
        **fields,
    )
    if on_progress is not None:
        final = _progress(publisher, builder, started, 0.0, report.totals["rate_per_s"] or 0.0, done=True)
        _report_progress(on_progress, final)
    logger.info(
        "Published %d readings (%d messages) in %.1f s; %d unacknowledged, %d unsent",
        report.totals["sent"],
        report.totals["messages"],
        elapsed_s,
        publisher.unacknowledged,
        pumped.unsent,
    )
    return report


def _pump(
    emissions: Iterator[Emission],
    flush: Callable[[], Iterable[Emission]],
    publisher: MqttPublisher,
    builder: ReportBuilder,
    stop_event: threading.Event,
    speed: float,
    rate_cap_per_s: float | None,
    on_progress: ProgressCallback | None,
    started: float,
) -> _PumpResult:
    """Publish emissions on schedule until they end or a stop is requested; return how it went."""
    publish = publisher.publish
    record = builder.record
    monotonic = time.monotonic
    per_offset_s = 1.0 / speed if speed > 0 else 0.0
    cap_interval_s = 1.0 / rate_cap_per_s if rate_cap_per_s else 0.0
    t0 = allowed_at = monotonic()
    next_progress = t0 + PROGRESS_INTERVAL_S
    progress_sent = 0
    max_lag_s = 0.0
    warned = False
    unsent = 0
    sent = 0
    leftover: list[Emission] = []
    for emission in emissions:
        if stop_event.is_set():
            leftover.append(emission)
            break
        due = t0 + emission.offset_s * per_offset_s
        if cap_interval_s:
            due = max(due, allowed_at)
        now = monotonic()
        ahead_s = due - now
        if ahead_s > _SLEEP_THRESHOLD_S:
            if stop_event.wait(ahead_s):
                leftover.append(emission)
                break
            now = monotonic()
        elif ahead_s < -max_lag_s and per_offset_s:
            max_lag_s = -ahead_s
            if max_lag_s > _LAG_WARNING_S and not warned:
                warned = True
                logger.warning(
                    "Publishing %.1f s behind schedule: the broker or this process cannot keep this rate", max_lag_s
                )
        if cap_interval_s:
            allowed_at = max(allowed_at, now - _CAP_BURST_S) + cap_interval_s
        if publish(emission.topic, emission.payload):
            record(emission)
            sent += 1
        else:
            unsent += 1
        if now >= next_progress and on_progress is not None:
            rate = (sent - progress_sent) / (now - next_progress + PROGRESS_INTERVAL_S)
            lag_s = max(0.0, -ahead_s) if per_offset_s else 0.0
            _report_progress(on_progress, _progress(publisher, builder, started, lag_s, rate))
            progress_sent = sent
            next_progress = now + PROGRESS_INTERVAL_S
        elif now >= next_progress:
            next_progress = now + PROGRESS_INTERVAL_S
    stopped_early = bool(leftover)
    if stopped_early:
        logger.info("Stop requested: sending what the devices already generated")
        leftover.extend(flush())
    for emission in leftover:
        if publish(emission.topic, emission.payload):
            record(emission)
        else:
            unsent += 1
    if unsent:
        logger.warning("%d generated messages could not be handed to paho before giving up", unsent)
    return _PumpResult(stopped_early, unsent, max_lag_s, monotonic() - t0)


def _progress(
    publisher: MqttPublisher,
    builder: ReportBuilder,
    started: float,
    lag_s: float,
    rate_per_s: float,
    done: bool = False,
) -> dict[str, Any]:
    expected = builder.expected_at_edge()
    return {
        "elapsed_s": round(time.monotonic() - started, 1),
        "sent": expected["sent"],
        "messages": expected["messages"],
        "acknowledged": publisher.acknowledged,
        "unacknowledged": publisher.unacknowledged,
        "rate_per_s": round(rate_per_s, 1),
        "lag_s": round(lag_s, 3),
        "connected": publisher.connected,
        "done": done,
    }


def _report_progress(on_progress: ProgressCallback, snapshot: dict[str, Any]) -> None:
    try:
        on_progress(snapshot)
    except Exception:  # a broken progress display must not stop the devices
        logger.exception("Progress callback failed")
