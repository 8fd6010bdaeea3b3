"""What the fleet dashboard shows, kept apart from Bokeh so it can be tested and bounded.

`FleetState` digests the hub's upstream stream (raw readings, predictions, dead letters, drift
alerts) into per-device counters and small fixed-size rings. A fleet has thousands of devices and
the stream never ends, so every structure here has a hard size: at most `max_devices` devices, a
ring of `points_per_device` points per device (allocated on the first point), a ring of seconds
for throughput, a ring of latencies, and capped counters for free-text reasons. Nothing a
producer sends can make `ingest` raise: whatever does not fit the contracts is counted as
malformed, by reason.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgefleet.alerts import ALERT_SCHEMA
from edgefleet.envelope import MAX_OPENED_BYTES, open_body
from edgefleet.messages import (
    BATCH_SCHEMA,
    DEADLETTER_SCHEMA,
    MODEL_KINDS,
    TELEMETRY_SCHEMA,
    MessageError,
    decode_json,
    parse_reading,
)
from edgefleet.routes import Message

logger = logging.getLogger(__name__)

__all__ = ["STATUSES", "TABLE_COLUMNS", "FleetState", "Overview"]

# A device's status follows the model of its latest prediction: its own (device_model), the fleet model
# plus its own correction (fleet_corrected), the fleet model (fallback); drifting and silent win over those.
STATUSES: Final = ("device_model", "fleet_corrected", "fallback", "drifting", "silent")
TABLE_COLUMNS: Final = (
    "device_id",
    "status",
    "readings",
    "predictions",
    "fallbacks",
    "deadletters",
    "mse",
    "last_seen_s_ago",
)
MAX_REASONS: Final = 64  # distinct reason strings kept per counter; the rest count as "other"
MAX_REASON_CHARS: Final = 64
MAX_FEATURES_SHOWN: Final = 32
OTHER: Final = "other"


def _reason(value: object) -> str:
    """Return a short printable reason string for any value."""
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_REASON_CHARS] or "unknown"


def _count(counter: Counter[str], reason: str, amount: int = 1) -> None:
    """Add to a reason counter without letting it grow past MAX_REASONS keys."""
    if reason in counter or len(counter) < MAX_REASONS:
        counter[reason] += amount
    else:
        counter[OTHER] += amount


def _finite(value: object) -> float | None:
    """Return value as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class _Device:
    """One device's counters and rings; guarded by the FleetState lock."""

    __slots__ = (
        "deadletters",
        "drift",
        "drifting_since_s",
        "fallbacks",
        "feature_names",
        "feature_values",
        "last_model",
        "last_seen_s",
        "points",
        "points_actual",
        "points_predicted",
        "points_ts_ms",
        "predictions",
        "readings",
        "sq_err_count",
        "sq_err_sum",
        "sq_errs",
    )

    def __init__(self) -> None:
        self.readings = 0
        self.predictions = 0
        self.deadletters = 0
        self.fallbacks: Counter[str] = Counter()
        self.last_seen_s = 0.0
        self.last_model: str | None = None
        self.drifting_since_s: float | None = None
        self.drift: dict[str, Any] | None = None
        self.points = 0  # how many points were ever written to the ring
        self.points_ts_ms: np.ndarray | None = None
        self.points_actual: np.ndarray | None = None
        self.points_predicted: np.ndarray | None = None
        self.sq_errs: np.ndarray | None = None
        self.sq_err_sum = 0.0
        self.sq_err_count = 0
        self.feature_names: tuple[str, ...] = ()
        self.feature_values: np.ndarray | None = None

    def mse(self) -> float:
        """Return the mean squared residual over the ring (NaN without labelled predictions)."""
        return self.sq_err_sum / self.sq_err_count if self.sq_err_count else math.nan


@dataclass(frozen=True, slots=True)
class Overview:
    """A fleet-wide snapshot: counters, status counts and column dicts for the overview plots."""

    now_s: float
    devices: int
    by_status: dict[str, int]
    totals: dict[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    throughput: dict[str, list[float]]
    deadletters_by_reason: dict[str, list[Any]]
    fallbacks_by_reason: dict[str, list[Any]]
    malformed_by_reason: dict[str, int]
    drift_alerts: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as a plain dict."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class FleetState:
    """Thread-safe, bounded digest of the upstream stream for the dashboard."""

    def __init__(
        self,
        *,
        silent_after_s: float = 60.0,
        points_per_device: int = 120,
        max_devices: int = 10_000,
        throughput_window_s: int = 300,
        latency_window_readings: int = 4096,
        drift_hold_s: float = 600.0,
        max_drift_alerts: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if silent_after_s <= 0 or points_per_device <= 0 or max_devices <= 0:
            raise ValueError("silent_after_s, points_per_device and max_devices must be positive")
        if throughput_window_s <= 0 or latency_window_readings <= 0:
            raise ValueError("throughput_window_s and latency_window_readings must be positive")
        self.silent_after_s = silent_after_s
        self.points_per_device = points_per_device
        self.max_devices = max_devices
        self.throughput_window_s = throughput_window_s
        self.drift_hold_s = drift_hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._totals: Counter[str] = Counter()
        self._deadletters: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._malformed: Counter[str] = Counter()
        self._drift_alerts: deque[dict[str, Any]] = deque(maxlen=max_drift_alerts)
        # Throughput: one slot per wall second, stamped with the second it counts.
        self._tp_second = np.full(throughput_window_s, -1, dtype=np.int64)
        self._tp_readings = np.zeros(throughput_window_s, dtype=np.int64)
        self._tp_predictions = np.zeros(throughput_window_s, dtype=np.int64)
        self._latencies_ms = np.full(latency_window_readings, np.nan)
        self._latency_next = 0

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, message: Message) -> None:
        """Digest one upstream message; count it as malformed instead of raising."""
        try:
            self._ingest(message)
        except Exception as err:  # a dashboard must survive any producer
            logger.debug("Malformed upstream message from %s: %s", message.connection_module_id, err, exc_info=True)
            self.count_malformed("unexpected")

    def count_malformed(self, reason: str) -> None:
        """Count one message the dashboard could not use."""
        with self._lock:
            _count(self._malformed, _reason(reason))
            self._totals["malformed"] += 1

    def _ingest(self, message: Message) -> None:
        try:
            # Prediction batches arrive gzip-compressed (edgefleet.envelope); other messages plain.
            body = decode_json(open_body(message.body, message.system_properties), MAX_OPENED_BYTES)
        except MessageError as err:
            self.count_malformed(err.reason)
            return
        if type(body) is not dict:
            self.count_malformed("not_object")
            return
        schema = body.get("schema")
        now_s = self._clock()
        with self._lock:
            self._totals["messages"] += 1
            if schema == BATCH_SCHEMA:
                items = body.get("readings")
                if type(items) is not list:
                    self._malformed_locked("bad_batch")
                    return
                for item in items:
                    self._item_locked(item, now_s)
            elif schema == TELEMETRY_SCHEMA:
                self._item_locked(body, now_s)
            elif schema == DEADLETTER_SCHEMA:
                self._deadletter_locked(body)
            elif schema == ALERT_SCHEMA:
                self._alert_locked(body, now_s)
            else:
                self._malformed_locked("wrong_schema")

    def _malformed_locked(self, reason: str) -> None:
        _count(self._malformed, reason)
        self._totals["malformed"] += 1

    def _device_locked(self, device_id: str) -> _Device | None:
        device = self._devices.get(device_id)
        if device is None:
            if len(self._devices) >= self.max_devices:
                self._totals["dropped_new_devices"] += 1
                return None
            device = self._devices[device_id] = _Device()
        return device

    def _item_locked(self, item: object, now_s: float) -> None:
        try:
            reading = parse_reading(item)
        except MessageError as err:
            self._malformed_locked(err.reason)
            return
        assert type(item) is dict  # parse_reading accepted it
        prediction = item.get("prediction")
        predicted: float | None = None
        model: str | None = None
        fallback_reason: str | None = None
        if prediction is not None:
            if type(prediction) is not dict:
                self._malformed_locked("bad_prediction")
                return
            predicted = _finite(prediction.get("value"))
            model = prediction.get("model")
            if predicted is None or model not in MODEL_KINDS:
                self._malformed_locked("bad_prediction")
                return
            if model == "fleet":
                fallback_reason = _reason(prediction.get("fallback_reason") or "unknown")
        device = self._device_locked(reading.device_id)
        if device is None:
            return
        device.last_seen_s = now_s
        second = int(now_s)
        slot = second % self.throughput_window_s
        if self._tp_second[slot] != second:
            self._tp_second[slot] = second
            self._tp_readings[slot] = 0
            self._tp_predictions[slot] = 0
        if prediction is None:
            device.readings += 1
            self._totals["readings"] += 1
            self._tp_readings[slot] += 1
        else:
            device.predictions += 1
            device.last_model = model
            self._totals["predictions"] += 1
            if model == "fleet_corrected":
                self._totals["fleet_corrected"] += 1
            self._tp_predictions[slot] += 1
            if fallback_reason is not None:
                _count(device.fallbacks, fallback_reason)
                _count(self._fallbacks, fallback_reason)
                self._totals["fallbacks"] += 1
            edge = item.get("edge")
            latency_ms = _finite(edge.get("latency_ms")) if type(edge) is dict else None
            if latency_ms is not None:
                self._latencies_ms[self._latency_next] = latency_ms
                self._latency_next = (self._latency_next + 1) % self._latencies_ms.size
        self._point_locked(device, reading.ts.timestamp() * 1000.0, reading.label, predicted)
        self._features_locked(device, reading.features)

    def _point_locked(self, device: _Device, ts_ms: float, actual: float | None, predicted: float | None) -> None:
        size = self.points_per_device
        if device.points_ts_ms is None:
            device.points_ts_ms = np.full(size, np.nan)
            device.points_actual = np.full(size, np.nan)
            device.points_predicted = np.full(size, np.nan)
            device.sq_errs = np.full(size, np.nan)
        assert device.points_actual is not None and device.points_predicted is not None and device.sq_errs is not None
        slot = device.points % size
        old = device.sq_errs[slot]
        if not math.isnan(old):
            device.sq_err_sum -= float(old)
            device.sq_err_count -= 1
        device.points_ts_ms[slot] = ts_ms
        device.points_actual[slot] = math.nan if actual is None else actual
        device.points_predicted[slot] = math.nan if predicted is None else predicted
        if actual is not None and predicted is not None:
            sq_err = (actual - predicted) ** 2
            device.sq_errs[slot] = sq_err
            device.sq_err_sum += sq_err
            device.sq_err_count += 1
        else:
            device.sq_errs[slot] = math.nan
        if device.sq_err_count == 0:
            device.sq_err_sum = 0.0  # wash out float residue
        device.points += 1

    def _features_locked(self, device: _Device, features: tuple[tuple[str, float], ...]) -> None:
        shown = features[:MAX_FEATURES_SHOWN]
        names = tuple(name for name, _ in shown)
        if names != device.feature_names or device.feature_values is None:
            device.feature_names = names
            device.feature_values = np.empty(len(names))
        device.feature_values[:] = [value for _, value in shown]

    def _deadletter_locked(self, body: dict[str, Any]) -> None:
        reason = _reason(body.get("reason", "unknown"))
        _count(self._deadletters, reason)
        self._totals["deadletters"] += 1
        # Attribute it to a known device when the kept payload names one (never create devices here).
        payload = body.get("payload")
        if isinstance(payload, str) and payload.startswith("{"):
            try:
                obj = decode_json(payload.encode("utf-8"))
            except (MessageError, UnicodeEncodeError):
                return
            device_id = obj.get("device_id") if type(obj) is dict else None
            device = self._devices.get(device_id) if isinstance(device_id, str) else None
            if device is not None:
                device.deadletters += 1

    def _alert_locked(self, body: dict[str, Any], now_s: float) -> None:
        self._totals["alerts"] += 1
        if body.get("kind") != "drift":
            return
        device_id = body.get("device_id")
        drift = body.get("drift")
        if not isinstance(device_id, str) or type(drift) is not dict:
            self._malformed_locked("bad_alert")
            return
        self._totals["drift_alerts"] += 1
        summary = {
            "device_id": device_id[:128],
            "kind": _reason(drift.get("kind", "unknown")),
            "metric": _reason(drift.get("metric", "")),
            "value": _finite(drift.get("value")),
            "threshold": _finite(drift.get("threshold")),
            "feature": _reason(drift["feature"]) if "feature" in drift else None,
            "received_s": now_s,
        }
        self._drift_alerts.append(summary)
        device = self._devices.get(device_id)
        if device is not None:
            device.drifting_since_s = now_s
            device.drift = summary

    # -- snapshots ---------------------------------------------------------------------------

    def _status_locked(self, device: _Device, now_s: float) -> str:
        if now_s - device.last_seen_s > self.silent_after_s:
            return "silent"
        if device.drifting_since_s is not None and now_s - device.drifting_since_s <= self.drift_hold_s:
            return "drifting"
        if device.last_model == "fleet":
            return "fallback"
        if device.last_model == "fleet_corrected":
            return "fleet_corrected"
        return "device_model"

    def overview(self) -> Overview:
        """Return the fleet-wide snapshot."""
        now_s = self._clock()
        with self._lock:
            by_status = dict.fromkeys(STATUSES, 0)
            for device in self._devices.values():
                by_status[self._status_locked(device, now_s)] += 1
            totals = {
                key: self._totals[key]
                for key in (
                    "messages",
                    "readings",
                    "predictions",
                    "fleet_corrected",
                    "fallbacks",
                    "deadletters",
                    "alerts",
                    "drift_alerts",
                    "malformed",
                    "dropped_new_devices",
                )
            }
            latencies = self._latencies_ms[~np.isnan(self._latencies_ms)]
            tp_seconds = self._tp_second.copy()
            tp_readings = self._tp_readings.copy()
            tp_predictions = self._tp_predictions.copy()
            deadletters = self._deadletters.most_common()
            fallbacks = self._fallbacks.most_common()
            malformed = dict(self._malformed)
            alerts = list(self._drift_alerts)[-20:]
            devices = len(self._devices)
        p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99])) if latencies.size else (math.nan, math.nan)
        # Whole seconds only (the current one is still filling), oldest first, within the window.
        current = int(now_s)
        keep = (tp_seconds >= 0) & (tp_seconds < current) & (tp_seconds >= current - self.throughput_window_s)
        order = np.argsort(tp_seconds[keep])
        throughput = {
            "t_ms": (tp_seconds[keep][order] * 1000.0).tolist(),
            "readings_per_s": tp_readings[keep][order].astype(float).tolist(),
            "predictions_per_s": tp_predictions[keep][order].astype(float).tolist(),
        }
        return Overview(
            now_s=now_s,
            devices=devices,
            by_status=by_status,
            totals=totals,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            throughput=throughput,
            deadletters_by_reason={"reason": [r for r, _ in deadletters], "count": [c for _, c in deadletters]},
            fallbacks_by_reason={"reason": [r for r, _ in fallbacks], "count": [c for _, c in fallbacks]},
            malformed_by_reason=malformed,
            drift_alerts=alerts,
        )

    def device_table(
        self, sort_by: str = "last_seen_s_ago", descending: bool = False, limit: int = 500
    ) -> dict[str, list[Any]]:
        """Return the top `limit` devices sorted by a TABLE_COLUMNS column, as a column dict."""
        if sort_by not in TABLE_COLUMNS:
            raise ValueError(f"sort_by={sort_by!r}: choose one of {', '.join(TABLE_COLUMNS)}")
        now_s = self._clock()
        with self._lock:
            rows = [
                (
                    device_id,
                    self._status_locked(device, now_s),
                    device.readings,
                    device.predictions,
                    sum(device.fallbacks.values()),
                    device.deadletters,
                    device.mse(),
                    max(0.0, now_s - device.last_seen_s),
                )
                for device_id, device in self._devices.items()
            ]
        index = TABLE_COLUMNS.index(sort_by)
        if sort_by == "mse":  # NaN (no labelled prediction yet) sorts last either way
            sign = -1.0 if descending else 1.0
            rows.sort(key=lambda row: (math.isnan(row[6]), sign * row[6] if not math.isnan(row[6]) else 0.0))
        else:
            rows.sort(key=lambda row: row[index], reverse=descending)
        rows = rows[: max(0, limit)]
        return {name: [row[i] for row in rows] for i, name in enumerate(TABLE_COLUMNS)}

    def device_ids(self) -> list[str]:
        """Return every known device id."""
        with self._lock:
            return list(self._devices)

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """Return one device's summary, ring points (oldest first) and last features, or None if unknown."""
        now_s = self._clock()
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                return None
            size = self.points_per_device
            if device.points_ts_ms is None:
                ts_ms = actual = predicted = np.empty(0)
            else:
                assert device.points_actual is not None and device.points_predicted is not None
                count = min(device.points, size)
                start = device.points % size if device.points > size else 0
                order = (np.arange(count) + start) % size
                ts_ms = device.points_ts_ms[order]
                actual = device.points_actual[order]
                predicted = device.points_predicted[order]
            features_values = device.feature_values.copy() if device.feature_values is not None else np.empty(0)
            summary = {
                "device_id": device_id,
                "status": self._status_locked(device, now_s),
                "readings": device.readings,
                "predictions": device.predictions,
                "fallbacks": dict(device.fallbacks),
                "deadletters": device.deadletters,
                "mse": device.mse(),
                "last_seen_s_ago": max(0.0, now_s - device.last_seen_s),
                "drift": dict(device.drift) if device.drift else None,
                "points_written": device.points,
            }
            feature_names = list(device.feature_names)
        return {
            **summary,
            "points": {
                "ts_ms": ts_ms.tolist(),
                "actual": actual.tolist(),
                "predicted": predicted.tolist(),
                "residual": (actual - predicted).tolist(),
            },
            "features": {"name": feature_names, "value": features_values.tolist()},
        }
