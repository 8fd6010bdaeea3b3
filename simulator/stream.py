"""The message-generation core: a deterministic stream of telemetry messages, no I/O, no clock.

Every device has its own random generator seeded from (fleet seed, device id), and draws
readings in fixed chunks: features and labels with `simulator.physics` (vectorised), plus one
row of uniforms per reading that decides its faults. A device's drift stages (planned in
`simulator.fleet`) shift its features and change its label relation from their time on. A heap
of next-send times interleaves the devices. Nothing here reads the wall clock, so the same plan
always yields the same emissions — device, seq, payload bytes and fault decisions — however
fast they are published.

Times are simulated seconds after the plan's start (`offset_s`); a reading's `ts` is the start
plus its scheduled offset. The publisher maps offsets to wall-clock time (or ignores them).
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from edgefleet.field import FIELD_TOPIC_TEMPLATE
from edgefleet.messages import TELEMETRY_SCHEMA
from simulator.fleet import DeviceSpec, FleetPlan, plan_fleet
from simulator.physics import FEATURES, device_seed
from simulator.profile import FaultRates, SimulatorProfile

__all__ = ["CHUNK_READINGS", "FAULT_TYPES", "DeviceStats", "Emission", "TelemetryStream", "generate"]

FAULT_TYPES: tuple[str, ...] = ("stuck", "spike", "nan", "missing_feature", "duplicate", "reorder", "burst", "silent")
_STUCK, _SPIKE, _NAN, _MISSING, _DUPLICATE, _REORDER, _BURST, _SILENT = range(len(FAULT_TYPES))
# Uniform columns per reading: one decision per per-reading fault, then which feature each value fault hits.
_DECISIONS = 7
_FEATURE_PICK = {_STUCK: 7, _SPIKE: 8, _NAN: 9, _MISSING: 10}
_UNIFORMS = 11
_NO_FAULT = [1.0] * _UNIFORMS  # uniforms of a reading without a fault decision (1.0 is never < a rate)
# Readings drawn per device at a time: numpy's per-call cost is paid once per chunk. Part of the
# stream's definition (it fixes the order of random draws): changing it changes every stream.
CHUNK_READINGS = 64
# Keeps the simulator's draws apart from generate-history's (which salts with 0x5EED).
_STREAM_SALT = 0x51_3A_7E
_UNBOUNDED_SILENCE_WINDOWS = 10  # without a duration, silence starts within 10 silence lengths


@dataclass(frozen=True, slots=True)
class Emission:
    """One MQTT message to send: a reading (or a duplicate copy of one) and what was done to it."""

    offset_s: float  # when to send it, in simulated seconds after the start
    device_id: str
    seq: int
    topic: str
    payload: bytes
    duplicate: bool = False  # a second copy of a reading sent just before
    faults: tuple[str, ...] = ()  # faults injected at this reading (a stuck episode is tagged where it starts)
    valid: bool = True  # False when it carries NaN: the edge dead-letters it as `non_finite`
    complete: bool = True  # False when a physics feature is absent: the edge uses the fleet model


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """What the stream did with one device so far."""

    device_id: str
    generated: int  # seqs used, 0 .. generated-1
    withheld: int  # readings not sent because the device was silent
    faults: dict[str, int]


_Pending = tuple[int, bytes, tuple[str, ...], bool, bool, bool]  # seq, payload, faults, valid, complete, duplicate


def _number_format(digits: int) -> str:
    return f"%.{digits}g"


@functools.lru_cache(maxsize=4096)
def _second_text(epoch_s: int) -> str:
    """Return ISO-8601 for a whole UTC second (cached: a fleet's readings share their seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def _ts_text(epoch_ms: int) -> str:
    """Return ISO-8601 with milliseconds (no zone letter) for epoch milliseconds."""
    epoch_s, ms = divmod(epoch_ms, 1000)
    return f"{_second_text(epoch_s)}.{ms:03d}"


class _Device:
    """The mutable state of one device inside a stream."""

    __slots__ = (
        "burst",
        "burst_readings",
        "chunk_start",
        "cols",
        "complete",
        "counts",
        "device_id",
        "drift",
        "drift_at_s",
        "drift_shifts",
        "fast_format",
        "fault_uniforms",
        "faulty",
        "head",
        "held",
        "interval_s",
        "last_offset_s",
        "n_features",
        "names",
        "noise_sd",
        "number_format",
        "phase_s",
        "pos",
        "prev_values",
        "profile",
        "rates",
        "rates_array",
        "rng",
        "seq",
        "silent_counted",
        "silent_from_s",
        "silent_until_s",
        "spike_factor",
        "start_ts_s",
        "stuck_j",
        "stuck_left",
        "stuck_readings",
        "stuck_value",
        "table",
        "topic",
        "withheld",
    )

    def __init__(
        self,
        spec: DeviceSpec,
        seed: int,
        start_ts_s: float,
        duration_s: float | None,
        faults: FaultRates,
        digits: int,
        topic_template: str,
    ) -> None:
        self.device_id = spec.device_id
        self.topic = topic_template.format(device_id=spec.device_id)
        self.names = spec.features
        self.n_features = len(spec.features)
        self.cols = np.array([FEATURES.index(name) for name in spec.features])
        self.complete = len(set(spec.features)) == len(FEATURES)
        self.profile = spec.profile
        self.drift = spec.drift
        self.drift_at_s = np.array([stage.at_s for stage in spec.drift])
        # None for a stage without a shift: its readings skip the addition.
        self.drift_shifts = [np.array(stage.shift) if any(stage.shift) else None for stage in spec.drift]
        self.noise_sd = spec.profile.noise_sd * spec.noise_scale
        self.interval_s = 1.0 / spec.rate_per_s
        self.start_ts_s = start_ts_s
        self.rng = np.random.default_rng(device_seed(seed, spec.device_id) ^ _STREAM_SALT)
        phase_u, silent_u, silent_start_u = self.rng.random(3)
        # Spread devices evenly over their interval, so a fleet at 1/s does not send in lockstep.
        self.phase_s = float(phase_u) * self.interval_s
        self.silent_from_s = self.silent_until_s = math.inf
        if silent_u < faults.silent_device_rate:
            if duration_s is None:
                window_s = _UNBOUNDED_SILENCE_WINDOWS * faults.silent_duration_s
            else:
                window_s = max(duration_s - faults.silent_duration_s, 0.0)
            self.silent_from_s = float(silent_start_u) * window_s
            self.silent_until_s = self.silent_from_s + faults.silent_duration_s
        self.silent_counted = False
        rates = [
            faults.stuck_rate,
            faults.spike_rate,
            faults.nan_rate,
            # Leaving out a device's only feature would make a reading with no features at all.
            faults.missing_feature_rate if self.n_features >= 2 else 0.0,
            faults.duplicate_rate,
            faults.reorder_rate,
            faults.burst_rate,
        ]
        self.rates = rates
        self.rates_array = np.array(rates)
        self.stuck_readings = faults.stuck_readings
        self.spike_factor = faults.spike_factor
        self.burst_readings = faults.burst_readings
        self.number_format = _number_format(digits)
        self.head = (
            '{"schema":' + json.dumps(TELEMETRY_SCHEMA) + ',"device_id":' + json.dumps(spec.device_id) + ',"seq":'
        )
        number = self.number_format
        features = ",".join(json.dumps(name).replace("%", "%%") + ":" + number for name in spec.features)
        self.fast_format = (
            self.head.replace("%", "%%") + '%d,"ts":"%sZ","features":{' + features + '},"label":' + number + "}"
        )
        self.seq = 0
        self.pos = CHUNK_READINGS
        self.chunk_start = -CHUNK_READINGS
        # The chunk, kept compact (a few kB per device, as thousands of devices hold one each):
        # one row per reading of [ts in epoch ms, features..., label], plus the uniforms of the
        # few readings that have a fault, and a bitmask saying which those are.
        self.table = np.empty((0, self.n_features + 2))
        self.faulty = 0
        self.fault_uniforms: dict[int, list[float]] = {}
        self.prev_values: list[Any] | None = None
        self.stuck_j = 0
        self.stuck_value = 0.0
        self.stuck_left = 0
        self.held: _Pending | None = None
        self.burst: list[_Pending] | None = None
        self.counts = [0] * len(FAULT_TYPES)
        self.withheld = 0
        self.last_offset_s = 0.0

    def next_offset_s(self) -> float:
        """Return when the device takes its next reading."""
        return self.phase_s + self.seq * self.interval_s

    def _refill(self) -> None:
        """Draw the next chunk of readings: timestamps, features, labels and fault uniforms."""
        self.chunk_start += CHUNK_READINGS
        offsets_s = self.phase_s + (self.chunk_start + np.arange(CHUNK_READINGS)) * self.interval_s
        ts_s = self.start_ts_s + offsets_s
        x = self.profile.features(ts_s, self.rng)
        noise = self.rng.standard_normal(CHUNK_READINGS)
        uniforms = self.rng.random((CHUNK_READINGS, _UNIFORMS))
        if self.drift and offsets_s[-1] >= self.drift_at_s[0]:
            labels = self._drifted_labels(x, offsets_s)
        else:
            labels = self.profile.label(x)
        table = np.empty((CHUNK_READINGS, self.n_features + 2))
        table[:, 0] = np.rint(ts_s * 1000.0)
        table[:, 1:-1] = x[:, self.cols]
        table[:, -1] = labels + noise * self.noise_sd
        self.table = table
        faulty_rows = np.flatnonzero((uniforms[:, :_DECISIONS] < self.rates_array).any(axis=1)).tolist()
        self.faulty = sum(1 << i for i in faulty_rows)
        self.fault_uniforms = {i: uniforms[i].tolist() for i in faulty_rows}
        self.pos = 0

    def _drifted_labels(self, x: np.ndarray, offsets_s: np.ndarray) -> np.ndarray:
        """Shift `x` in place by the stage in force at each reading and return the labels of that stage."""
        # The latest stage started at each reading (-1: none yet) is all that matters: stages are in
        # time order and each holds the whole state in force. Offsets increase, so a chunk spans the
        # stages from its first reading's to its last's, and most chunks lie within one.
        at_s = self.drift_at_s
        first = int(np.searchsorted(at_s, offsets_s[0], side="right")) - 1
        last = int(np.searchsorted(at_s, offsets_s[-1], side="right")) - 1
        if first == last:
            return self._stage_labels(first, x)
        stage_of = np.searchsorted(at_s, offsets_s, side="right") - 1
        labels = np.empty(len(offsets_s))
        for k in range(first, last + 1):
            rows = stage_of == k
            if rows.any():
                part = x[rows]
                labels[rows] = self._stage_labels(k, part)
                x[rows] = part
        return labels

    def _stage_labels(self, k: int, x: np.ndarray) -> np.ndarray:
        """Shift `x` in place by stage `k`'s shift and return its relation's labels (-1: before any stage)."""
        if k < 0:
            return self.profile.label(x)
        shift = self.drift_shifts[k]
        if shift is not None:
            x += shift
        return self.drift[k].profile.label(x)

    def tick(self, offset_s: float) -> list[Emission]:
        """Take the device's next reading at `offset_s` and return what it sends now."""
        i = self.pos
        if i == CHUNK_READINGS:
            self._refill()
            i = 0
        self.pos = i + 1
        seq = self.seq
        self.seq = seq + 1
        self.last_offset_s = offset_s
        if self.silent_from_s <= offset_s < self.silent_until_s:
            # The seq is used up while silent, so the edge sees the gap when the device is back.
            self.withheld += 1
            if not self.silent_counted:
                self.silent_counted = True
                self.counts[_SILENT] += 1
            return []
        values: list[Any] = self.table[i].tolist()  # [ts ms, features..., label]
        values[0] = _ts_text(int(values[0]))
        if not (self.faulty >> i) & 1 and not self.stuck_left and self.held is None and self.burst is None:
            self.prev_values = values
            payload = (self.fast_format % (seq, *values)).encode()
            return [Emission(offset_s, self.device_id, seq, self.topic, payload, False, (), True, self.complete)]
        return self._tick_with_faults(offset_s, i, seq, values)

    def _tick_with_faults(self, offset_s: float, i: int, seq: int, values: list[Any]) -> list[Emission]:
        """Apply this reading's value and transport faults and return what the device sends now."""
        u = self.fault_uniforms.get(i) or _NO_FAULT
        rates = self.rates
        counts = self.counts
        n = self.n_features
        row: list[float] = values[1 : n + 1]
        faults: list[str] = []
        if u[_STUCK] < rates[_STUCK]:  # a new episode replaces one still running
            j = int(u[_FEATURE_PICK[_STUCK]] * n)
            self.stuck_j = j
            self.stuck_value = self.prev_values[j + 1] if self.prev_values is not None else row[j]
            row[j] = self.stuck_value
            self.stuck_left = self.stuck_readings - 1
            faults.append("stuck")
            counts[_STUCK] += 1
        elif self.stuck_left:
            row[self.stuck_j] = self.stuck_value
            self.stuck_left -= 1
        self.prev_values = values  # the true values: a stuck episode starting next repeats these
        if u[_SPIKE] < rates[_SPIKE]:
            row[int(u[_FEATURE_PICK[_SPIKE]] * n)] *= self.spike_factor
            faults.append("spike")
            counts[_SPIKE] += 1
        nan_j = -1
        if u[_NAN] < rates[_NAN]:
            nan_j = int(u[_FEATURE_PICK[_NAN]] * n)
            row[nan_j] = math.nan
            faults.append("nan")
            counts[_NAN] += 1
        missing_j = -1
        if u[_MISSING] < rates[_MISSING]:
            missing_j = int(u[_FEATURE_PICK[_MISSING]] * n)
            if missing_j == nan_j:  # leaving out the NaN would hide the NaN fault
                missing_j = (missing_j + 1) % n
            faults.append("missing_feature")
            counts[_MISSING] += 1
        duplicate = u[_DUPLICATE] < rates[_DUPLICATE]
        burst_start = self.burst is None and u[_BURST] < rates[_BURST]
        # Never hold back seq 0: an edge reads a late seq 0 as a device restart, not a late reading.
        reorder = self.burst is None and not burst_start and self.held is None and seq > 0
        reorder = reorder and u[_REORDER] < rates[_REORDER]
        for flag, index in ((duplicate, _DUPLICATE), (reorder, _REORDER), (burst_start, _BURST)):
            if flag:
                faults.append(FAULT_TYPES[index])
                counts[index] += 1
        payload = self._encode(seq, values[0], row, values[n + 1], missing_j)
        pending: _Pending = (seq, payload, tuple(faults), nan_j < 0, self.complete and missing_j < 0, duplicate)
        out: list[_Pending]
        if self.burst is not None:
            self.burst.append(pending)
            out = []
            if len(self.burst) >= self.burst_readings:
                out, self.burst = self.burst, None
        elif burst_start:
            self.burst = [pending]
            out = []
        elif reorder:
            self.held = pending
            out = []
        else:
            out = [pending]
        if out and self.held is not None:
            # The held reading goes right after the next one the device sends: the pair is swapped.
            out.append(self.held)
            self.held = None
        return self._emit(offset_s, out)

    def _encode(self, seq: int, ts: str, row: list[float], label: float, missing_j: int) -> bytes:
        """Build a payload that may leave out a feature or carry NaN (which JSON itself cannot express)."""
        number = self.number_format
        parts = [
            json.dumps(name) + ":" + _format_number(value, number)
            for j, (name, value) in enumerate(zip(self.names, row, strict=True))
            if j != missing_j
        ]
        body = f'{seq},"ts":"{ts}Z","features":{{{",".join(parts)}}},"label":{_format_number(label, number)}}}'
        return (self.head + body).encode()

    def _emit(self, offset_s: float, out: list[_Pending]) -> list[Emission]:
        emissions = []
        device_id, topic = self.device_id, self.topic
        for seq, payload, faults, valid, complete, duplicate in out:
            emissions.append(Emission(offset_s, device_id, seq, topic, payload, False, faults, valid, complete))
            if duplicate:
                emissions.append(Emission(offset_s, device_id, seq, topic, payload, True, faults, valid, complete))
        return emissions

    def flush(self) -> list[Emission]:
        """Return the readings the device still holds (a burst being collected, a reordered one)."""
        out = list(self.burst or ())
        if self.held is not None:
            out.append(self.held)
        self.burst = None
        self.held = None
        return self._emit(self.last_offset_s, out)

    def stats(self) -> DeviceStats:
        """Return the device's counts so far."""
        return DeviceStats(self.device_id, self.seq, self.withheld, dict(zip(FAULT_TYPES, self.counts, strict=True)))


def _format_number(value: float, number_format: str) -> str:
    """Format a float for the payload, writing non-finite values as the JSON-ish literals NaN/Infinity."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return number_format % value


class TelemetryStream:
    """A single-use, deterministic iterator of Emissions for a fleet plan."""

    def __init__(
        self,
        plan: FleetPlan,
        faults: FaultRates | None = None,
        *,
        precision_digits: int = 4,
        topic_template: str = FIELD_TOPIC_TEMPLATE,
    ) -> None:
        self.plan = plan
        faults = faults or FaultRates()
        start_ts_s = plan.start_ts.timestamp()
        self._devices = [
            _Device(spec, plan.seed, start_ts_s, plan.duration_s, faults, precision_digits, topic_template)
            for spec in plan.devices
        ]
        # Ties at the same time go by device index: the order is part of the stream's definition.
        self._heap = [(device.next_offset_s(), index) for index, device in enumerate(self._devices)]
        heapq.heapify(self._heap)
        self._started = False
        self._rest: deque[Emission] = deque()

    @classmethod
    def from_profile(
        cls, profile: SimulatorProfile, *, duration_s: float | None = None, start_ts: datetime | None = None
    ) -> TelemetryStream:
        """Plan `profile`'s fleet and return its stream (`duration_s`/`start_ts` override the profile)."""
        plan = plan_fleet(profile, duration_s=duration_s, start_ts=start_ts)
        return cls(
            plan,
            profile.faults,
            precision_digits=profile.precision_digits,
            topic_template=profile.mqtt.topic_template,
        )

    def __iter__(self) -> Iterator[Emission]:
        """Yield emissions in send order until the duration ends, then what devices still hold."""
        if self._started:
            raise RuntimeError("a TelemetryStream can be iterated once; build a new one to replay it")
        self._started = True
        heap = self._heap
        devices = self._devices
        end_s = self.plan.duration_s if self.plan.duration_s is not None else math.inf
        heapreplace = heapq.heapreplace
        while heap:
            offset_s, index = heap[0]
            if offset_s >= end_s:
                break
            device = devices[index]
            emissions = device.tick(offset_s)
            heapreplace(heap, (device.phase_s + device.seq * device.interval_s, index))
            if not emissions:
                continue
            if len(emissions) == 1:
                yield emissions[0]
            else:
                # Kept where flush() finds them: a consumer may stop in the middle of a burst.
                rest = self._rest = deque(emissions)
                while rest:
                    yield rest.popleft()
        yield from self.flush()

    def flush(self) -> list[Emission]:
        """Return every reading devices still hold back, so a stopped run sends all it generated."""
        out: list[Emission] = list(self._rest)
        self._rest.clear()
        for device in self._devices:
            if device.burst is not None or device.held is not None:
                out.extend(device.flush())
        return out

    def reached_s(self) -> float:
        """Return the simulated offset of the last reading any device took (0 before the first)."""
        return max((device.last_offset_s for device in self._devices), default=0.0)

    def device_stats(self) -> list[DeviceStats]:
        """Return per-device counts of generated and withheld readings and injected faults."""
        return [device.stats() for device in self._devices]

    def fault_totals(self) -> dict[str, int]:
        """Return the fleet's injected faults by type."""
        totals = [0] * len(FAULT_TYPES)
        for device in self._devices:
            for index, count in enumerate(device.counts):
                totals[index] += count
        return dict(zip(FAULT_TYPES, totals, strict=True))


def generate(
    profile: SimulatorProfile, *, duration_s: float | None = None, start_ts: datetime | None = None
) -> Iterator[Emission]:
    """Yield the whole deterministic stream of `profile` (pure: no I/O, no clock unless start_ts is 'now')."""
    return iter(TelemetryStream.from_profile(profile, duration_s=duration_s, start_ts=start_ts))
