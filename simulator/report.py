"""The sent-count report: per device what was published, and what the edge should make of it.

`ReportBuilder.record` is called once per message paho accepted, in publish order. Besides
per-device counts it replays what an edge receiving every message once, in that order, would
count (the sensor module's rules in `modules/sensor/sequence.py`): readings it accepts, NaN
readings it dead-letters as `non_finite`, duplicates it drops, seq gaps and late readings.
An end-to-end test can then account for every reading. QoS 1 redeliveries after a reconnect
can add duplicates at the edge beyond `expected_at_edge.duplicates`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edgefleet.messages import format_ts
from simulator.stream import FAULT_TYPES, DeviceStats, Emission

__all__ = ["REPORT_SCHEMA", "DeviceReport", "ReportBuilder", "SimulationReport", "totals", "write_report"]

REPORT_SCHEMA = "edgefleet.simulator-report/1"
# The sensor's rule (modules/sensor/sequence.py): a seq this far below the highest seen is a counter reset.
_RESET_BELOW = 10_000


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """What one device sent."""

    device_id: str
    sent: int  # unique readings published
    duplicates_sent: int  # extra copies published on purpose
    withheld: int  # readings not sent while the device was silent (their seqs are gaps)
    faults: Mapping[str, int]
    first_seq: int | None
    last_seq: int | None

    def to_json_obj(self) -> dict[str, Any]:
        """Return the device's entry of the JSON report (fault types that did not occur are left out)."""
        return {
            "sent": self.sent,
            "duplicates_sent": self.duplicates_sent,
            "withheld": self.withheld,
            "faults": {name: count for name, count in self.faults.items() if count},
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """Everything one simulator run published, for people and for end-to-end accounting."""

    mode: str  # "simulate" or "replay"
    started_at: datetime
    elapsed_s: float
    stopped_early: bool
    mqtt: Mapping[str, Any]
    totals: Mapping[str, Any]
    delivery: Mapping[str, Any]
    expected_at_edge: Mapping[str, int]
    devices: tuple[DeviceReport, ...]
    seed: int | None = None
    start_ts: str | None = None
    end_ts: str | None = None  # simulated time of the last reading taken: a follow-up run can start here
    planned_duration_s: float | None = None
    drift: tuple[Mapping[str, Any], ...] = ()
    source: str | None = None
    _by_id: dict[str, DeviceReport] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update((device.device_id, device) for device in self.devices)

    @property
    def sent(self) -> int:
        """Return the unique readings published."""
        return int(self.totals["sent"])

    def device(self, device_id: str) -> DeviceReport:
        """Return one device's counts."""
        return self._by_id[device_id]

    def to_json_obj(self) -> dict[str, Any]:
        """Return the report as a JSON-ready object."""
        return {
            "schema": REPORT_SCHEMA,
            "mode": self.mode,
            "source": self.source,
            "seed": self.seed,
            "started_at": format_ts(self.started_at),
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "planned_duration_s": self.planned_duration_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_early": self.stopped_early,
            "mqtt": dict(self.mqtt),
            "totals": dict(self.totals),
            "delivery": dict(self.delivery),
            "expected_at_edge": dict(self.expected_at_edge),
            "drift": [dict(event) for event in self.drift],
            "devices": {device.device_id: device.to_json_obj() for device in self.devices},
        }


def write_report(report: SimulationReport, path: Path) -> Path:
    """Write the report as JSON (to a temp name, then renamed: readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json_obj(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


class _Tally:
    """One device's counters while a run is going (mutable, private to the builder)."""

    __slots__ = ("duplicates_sent", "first_seq", "high", "last_seq", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.duplicates_sent = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.high: int | None = None  # the edge's view: highest valid seq seen


class ReportBuilder:
    """Count published messages per device and what the edge should receive."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self.valid = 0
        self.non_finite = 0
        self.edge_duplicates = 0
        self.seq_missing = 0
        self.seq_late = 0
        self.seq_resets = 0
        self.missing_features = 0

    def record(self, emission: Emission) -> None:
        """Count one message paho accepted for sending."""
        tally = self._tallies.get(emission.device_id)
        if tally is None:
            tally = self._tallies[emission.device_id] = _Tally()
        seq = emission.seq
        if emission.duplicate:
            tally.duplicates_sent += 1
        else:
            tally.sent += 1
            if tally.first_seq is None or seq < tally.first_seq:
                tally.first_seq = seq
            if tally.last_seq is None or seq > tally.last_seq:
                tally.last_seq = seq
        if not emission.valid:
            # Dead-lettered before the edge looks at seqs: the seq stays a gap at the edge.
            self.non_finite += 1
            return
        if emission.duplicate:
            # The sensor remembers its last 256 seqs per device; a copy follows its original
            # closely (a replayed file's repeats too, as a rule), so it is always recognised.
            self.edge_duplicates += 1
            return
        high = tally.high
        if high is None:
            tally.high = seq
        elif seq > high:
            self.seq_missing += seq - high - 1
            tally.high = seq
        elif high - seq > _RESET_BELOW or seq == 0:
            self.seq_resets += 1
            tally.high = seq
        else:
            self.seq_late += 1
            self.seq_missing = max(0, self.seq_missing - 1)
        self.valid += 1
        if not emission.complete:
            self.missing_features += 1

    def expected_at_edge(self) -> dict[str, int]:
        """Return what an edge that receives every message once, in publish order, should count."""
        sent = sum(tally.sent for tally in self._tallies.values())
        duplicates_sent = sum(tally.duplicates_sent for tally in self._tallies.values())
        return {
            "messages": sent + duplicates_sent,
            "sent": sent,  # unique readings published
            "expected_valid": self.valid,  # unique readings the edge accepts (one prediction each)
            "deadletter_non_finite": self.non_finite,  # messages with NaN, duplicates included
            "duplicates": self.edge_duplicates,  # copies of accepted readings the edge drops
            "missing_features": self.missing_features,  # accepted readings served by the fleet model
            "seq_missing": self.seq_missing,
            "seq_late": self.seq_late,
            "seq_resets": self.seq_resets,
        }

    def device_reports(self, stats: Iterable[DeviceStats] = ()) -> tuple[DeviceReport, ...]:
        """Return per-device reports: every device in `stats` (in its order), then any others published."""
        reports = []
        seen: set[str] = set()
        empty = _Tally()
        for stat in stats:
            seen.add(stat.device_id)
            tally = self._tallies.get(stat.device_id, empty)
            reports.append(_device_report(stat.device_id, tally, stat.withheld, stat.faults))
        for device_id, tally in self._tallies.items():
            if device_id not in seen:
                reports.append(_device_report(device_id, tally, 0, {}))
        return tuple(reports)


def _device_report(device_id: str, tally: _Tally, withheld: int, faults: Mapping[str, int]) -> DeviceReport:
    return DeviceReport(
        device_id=device_id,
        sent=tally.sent,
        duplicates_sent=tally.duplicates_sent,
        withheld=withheld,
        faults=dict(faults),
        first_seq=tally.first_seq,
        last_seq=tally.last_seq,
    )


def totals(devices: Sequence[DeviceReport], fault_totals: Mapping[str, int], elapsed_s: float) -> dict[str, Any]:
    """Return the fleet totals of a report."""
    sent = sum(device.sent for device in devices)
    duplicates_sent = sum(device.duplicates_sent for device in devices)
    return {
        "devices": len(devices),
        "sent": sent,
        "duplicates_sent": duplicates_sent,
        "messages": sent + duplicates_sent,
        "withheld": sum(device.withheld for device in devices),
        "faults": {name: int(fault_totals.get(name, 0)) for name in FAULT_TYPES},
        "rate_per_s": round(sent / elapsed_s, 1) if elapsed_s > 0 else None,
    }
