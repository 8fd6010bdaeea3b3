"""The inference service: telemetry in, one prediction per reading out, bad input dead-lettered.

Threads: the SDK's handler thread only queues what arrives; one worker decodes, routes and
predicts (many readings per model call); one loader thread reads device models into the LRU
(sha256-checked), so a cache miss delays only that device's readings, never the message path;
the outbox threads send. On SIGTERM the worker finishes what is queued, the outbox drains,
and what edgeHub hands over after that is kept in a spool file and answered on the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.alerts import ALERT_SCHEMA
from edgefleet.bundle import Route
from edgefleet.endpoints import ALERTS, DEADLETTER, INFERENCE, PREDICTIONS
from edgefleet.errors import BundleError
from edgefleet.health import touch_health
from edgefleet.messages import (
    BATCH_SCHEMA,
    DEADLETTER_SCHEMA,
    DeadLetter,
    EdgeInfo,
    MessageError,
    PredictionInfo,
    Reading,
    decode_payload,
    encode_json,
    format_ts,
    pack_batches,
    prediction_json_obj,
)
from modules.inference.bundle import drift_monitor_for, open_bundle
from modules.inference.drift import DriftMonitor
from modules.inference.predictor import MODEL_ERROR, Choice, Predictor
from modules.inference.settings import InferenceDesired, InferenceSettings
from modules.inference.spool import SPOOL_DIR, InputMessage, Spool
from modules.runtime import STOP_RESERVE_S, EdgeLink, LatencyWindow, ModuleClient, Outbox, apply_desired_patch

if TYPE_CHECKING:
    from azure.iot.device.custom_typing import JSONSerializable

logger = logging.getLogger(__name__)

__all__ = ["InferenceService"]

# Twin documents are limited in size: report the first drifting devices, count all of them.
MAX_REPORTED_DRIFTING = 50
DRAIN_TIMEOUT_S = 30.0
HANDOVER_QUIET_S = 0.3  # how long the SDK must stay quiet after disconnecting before we spool


@dataclass(frozen=True, slots=True)
class _Loaded:
    predictor: Predictor
    device_id: str
    error: str | None


@dataclass(frozen=True, slots=True)
class _Swap:
    predictor: Predictor


_Item = InputMessage | _Loaded | _Swap
# A reading on its way to a model: the reading, its feature row, when it was received (wall clock, s).
_Entry = tuple[Reading, list[float], float]


class InferenceService:
    """Predict every reading that arrives on input `telemetry` with its device's model."""

    def __init__(self, settings: InferenceSettings, client: ModuleClient) -> None:
        self.settings = settings
        self.desired = InferenceDesired()
        self.config_error: str | None = None
        self.predictor = open_bundle(settings, self.desired.poor_model_threshold)
        logger.info(
            "Bundle %s: %d devices, features %s",
            self.predictor.version,
            len(self.predictor.reader.manifest.devices),
            ", ".join(self.predictor.features),
        )
        self.link = EdgeLink(client, INFERENCE)
        self.outbox = Outbox(self.link.send, threads=2)
        self.latency = LatencyWindow()
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._loads: queue.Queue[tuple[Predictor, str] | None] = queue.Queue()
        self._loading: set[str] = set()
        self._pending: dict[str, list[_Entry]] = defaultdict(list)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._deadletters: Counter[str] = Counter()
        self._handover: list[InputMessage] | None = None  # set while stopping: late arrivals go to the spool
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # inbox items not yet fully processed
        self._last_arrival_s = 0.0
        self._alerted: set[str] = set()
        # Residual drift per device (worker thread only); rebuilt when the bundle changes.
        self._drift: DriftMonitor | None = None
        self._drift_version: str | None = None
        self.spool = Spool(settings.state_dir / SPOOL_DIR)

    # -- receiving --------------------------------------------------------------------------------

    def on_input(self, input_name: str, body: bytes, properties: Mapping[str, str]) -> None:
        """Queue one message from edgeHub (the SDK's handler thread; never blocks for long)."""
        item = InputMessage(input_name, body, time.time())
        with self._lock:
            self._last_arrival_s = time.monotonic()
            if self._handover is not None:
                self._handover.append(item)
                return
            self._busy += 1
        self._inbox.put(item)

    def _post(self, item: _Item) -> None:
        with self._lock:
            self._busy += 1
        self._inbox.put(item)

    # -- the worker -------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            first = self._inbox.get()
            items = [first]
            while len(items) < self.settings.max_messages_per_round:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process(items)
            except Exception:  # the worker must survive anything one round throws
                logger.exception("Unexpected error in a processing round of %d item(s)", len(items))
                with self._lock:
                    self._counters["internal_errors"] += 1
            finally:
                with self._lock:
                    self._busy -= len(items)
                    if self._busy == 0:
                        self._idle.notify_all()

    def _process(self, items: list[_Item]) -> None:
        ready: dict[tuple[str | None, str | None, bool], tuple[Choice, list[_Entry]]] = {}
        predictor = self.predictor

        def add(choice: Choice, reading: Reading, row: list[float], received_s: float) -> None:
            key = (choice.route.device_id, choice.route.fallback_reason, choice.fill)
            group = ready.get(key)
            if group is None:
                group = ready[key] = (choice, [])
            group[1].append((reading, row, received_s))

        def place(reading: Reading, received_s: float) -> None:
            choice, row = predictor.choose(reading)
            if choice.route.device_id is not None and predictor.ready_model(choice.route) is None:
                self._pending[choice.route.device_id].append((reading, row, received_s))
                if choice.route.device_id not in self._loading:
                    self._loading.add(choice.route.device_id)
                    self._loads.put((predictor, choice.route.device_id))
                return
            add(choice, reading, row, received_s)

        for item in items:
            if isinstance(item, InputMessage):
                for reading, received_s in self._decode(item):
                    place(reading, received_s)
            elif isinstance(item, _Loaded):
                self._loading.discard(item.device_id)
                waiting = self._pending.pop(item.device_id, [])
                if item.error is not None:
                    self._alert(MODEL_ERROR, f"device {item.device_id}: {item.error}", key=f"load:{item.device_id}")
                for reading, _row, received_s in waiting:
                    place(reading, received_s)
            else:
                predictor = self.predictor = item.predictor
                waiting = [entry for entries in self._pending.values() for entry in entries]
                self._pending.clear()
                self._loading.clear()
                for reading, _row, received_s in waiting:
                    place(reading, received_s)
        if ready:
            self._predict_and_send(predictor, list(ready.values()))

    def _decode(self, item: InputMessage) -> list[tuple[Reading, float]]:
        source = f"{INFERENCE.name}/{item.name}"
        with self._lock:
            self._counters["messages_in"] += 1
        try:
            readings, errors = decode_payload(item.body, self.settings.max_message_bytes)
        except MessageError as err:
            self._dead_letter(DeadLetter.from_error(err, source, item.body))
            return []
        for item_err, bad in errors:
            self._dead_letter(DeadLetter.from_item(item_err, source, bad))
        with self._lock:
            self._counters["readings_in"] += len(readings)
        return [
            (reading, reading.received_ts.timestamp() if reading.received_ts is not None else item.received_s)
            for reading in readings
        ]

    def _predict_and_send(self, predictor: Predictor, groups: list[tuple[Choice, list[_Entry]]]) -> None:
        edge_device = self.settings.edge_device_id
        version = predictor.version
        encoded: list[bytes] = []
        latencies: list[float] = []
        fallbacks: Counter[str] = Counter()
        drift = self._drift_monitor(predictor)
        drift_alerts = []
        for choice, entries in groups:
            model = predictor.ready_model(choice.route)
            values = predictor.predict(model, choice, [row for _, row, _ in entries])
            route: Route = choice.route
            info_cache: dict[float, PredictionInfo] = {}
            done_s = time.time()
            for (reading, row, received_s), value in zip(entries, values, strict=True):
                info = info_cache.get(value)
                if info is None:
                    info = info_cache[value] = PredictionInfo(value, route.kind, version, route.fallback_reason)
                latency_ms = round((done_s - received_s) * 1000, 3)
                latencies.append(latency_ms)
                edge = EdgeInfo(edge_device, datetime.fromtimestamp(received_s, UTC), latency_ms)
                encoded.append(encode_json(prediction_json_obj(reading, info, edge)))
                if drift is not None:
                    # A reading predicted on filled-in features measures the fill, not the model: only
                    # the features it carries are judged (the missing ones are NaN in `row`).
                    label = None if choice.fill else reading.label
                    drift_alerts += drift.observe(reading.device_id, row, value, label, reading.ts)
            if route.fallback_reason is not None:
                fallbacks[route.fallback_reason] += len(entries)
        for body in pack_batches(encoded, self.settings.predictions_max_bytes):
            self.outbox.put(PREDICTIONS, body, {"schema": BATCH_SCHEMA})
        for alert in drift_alerts:  # modules.inference.drift logs each one
            self.outbox.put(
                ALERTS, encode_json(alert.to_json_obj(edge_device)), {"schema": ALERT_SCHEMA, "kind": "drift"}
            )
        self.latency.add_many(latencies)
        with self._lock:
            self._counters["drift_alerts"] += len(drift_alerts)
            self._counters["predictions"] += len(encoded)
            self._counters["device_model"] += len(encoded) - sum(fallbacks.values())
            self._fallbacks.update(fallbacks)

    def _drift_monitor(self, predictor: Predictor) -> DriftMonitor | None:
        """Return the drift monitor of `predictor`'s bundle, building it on the bundle's first use."""
        if self._drift_version == predictor.version:
            return self._drift
        self._drift = drift_monitor_for(predictor)
        self._drift_version = predictor.version
        return self._drift

    def drifting_devices(self) -> list[str]:
        """Return the devices whose drift alert (residual or feature) is active, to mark for retraining."""
        drift = self._drift
        return sorted(drift.drifting_devices()) if drift is not None else []

    def _load_loop(self) -> None:
        while True:
            job = self._loads.get()
            if job is None:
                return
            predictor, device_id = job
            started = time.perf_counter()
            error = predictor.load(device_id)
            with self._lock:
                self._counters["model_loads"] += 1
                if error is not None:
                    self._counters["model_load_errors"] += 1
            if error is None:
                logger.debug("Loaded model of %s in %.1f ms", device_id, (time.perf_counter() - started) * 1000)
            else:
                logger.error("Model of %s cannot be used; serving the fleet model: %s", device_id, error)
            self._post(_Loaded(predictor, device_id, error))

    # -- dead letters and alerts ------------------------------------------------------------------

    def _dead_letter(self, dead: DeadLetter) -> None:
        with self._lock:
            self._deadletters[dead.reason] += 1
        logger.debug("Dead-lettered: %s (%s)", dead.reason, dead.detail)
        self.outbox.put(
            DEADLETTER, encode_json(dead.to_json_obj()), {"schema": DEADLETTER_SCHEMA, "reason": dead.reason}
        )

    def _alert(self, kind: str, detail: str, key: str | None = None) -> None:
        """Send one alert upstream (once per `key`)."""
        key = key or kind
        with self._lock:
            if key in self._alerted:
                return
            self._alerted.add(key)
        alert = {
            "schema": ALERT_SCHEMA,
            "kind": kind,
            "detail": detail,
            "edge_device": self.settings.edge_device_id,
            "module": INFERENCE.name,
            "ts": format_ts(datetime.now(UTC)),
        }
        self.outbox.put(ALERTS, encode_json(alert), {"schema": ALERT_SCHEMA, "kind": kind})

    # -- twin and methods -------------------------------------------------------------------------

    def apply_desired(self, patch: Mapping[str, Any]) -> None:
        """Apply desired properties (the full set at start, or a patch while running)."""
        try:
            desired = apply_desired_patch(self.desired, patch)
        except ValueError as err:
            logger.error("%s", err)
            self.config_error = str(err)
            self.link.report(self.reported())
            return
        self.desired, self.config_error = desired, None
        logging.getLogger().setLevel(desired.log_level)
        if desired.poor_model_threshold != self.predictor.poor_model_threshold:
            self.predictor.set_poor_model_threshold(desired.poor_model_threshold)
        self._check_version()
        logger.info(
            "Desired: expectedBundleVersion=%s poorModelThreshold=%s logLevel=%s",
            desired.expected_bundle_version,
            desired.poor_model_threshold,
            desired.log_level,
        )
        self.link.report(self.reported())

    def _check_version(self) -> None:
        expected = self.desired.expected_bundle_version
        if expected is not None and expected != self.predictor.version:
            logger.error("Bundle version %s is loaded but the deployment expects %s", self.predictor.version, expected)
            self._alert(
                "bundle_version_mismatch",
                f"loaded bundle {self.predictor.version}, deployment expects {expected}",
                key=f"version:{self.predictor.version}:{expected}",
            )

    def bundle_status(self) -> str:
        """Return 'ok', or 'version_mismatch' when the twin expects another bundle."""
        expected = self.desired.expected_bundle_version
        return "ok" if expected is None or expected == self.predictor.version else "version_mismatch"

    def stats(self) -> dict[str, Any]:
        """Return the module's counters and latency percentiles."""
        with self._lock:
            counters: dict[str, Any] = dict(self._counters)
            counters["fallbacks"] = dict(self._fallbacks)
            counters["deadletters"] = dict(self._deadletters)
            counters["waiting_for_model"] = sum(len(entries) for entries in self._pending.values())
        counters["drifting_devices"] = len(self.drifting_devices())
        counters["drift_flatlined"] = self._drift.flatlined_readings if self._drift is not None else 0
        counters["latency"] = self.latency.percentiles()
        counters["cached_model_bytes"] = self.predictor.reader.cached_bytes
        counters["outbox"] = self.outbox.stats()
        return counters

    def reset(self) -> dict[str, Any]:
        """Zero the counters; return their values before."""
        before = self.stats()
        with self._lock:
            self._counters.clear()
            self._fallbacks.clear()
            self._deadletters.clear()
        self.latency.reset()
        self.outbox.reset()
        return before

    def reload(self, payload: JSONSerializable = None) -> tuple[int, JSONSerializable]:
        """Re-verify and reopen the bundle directory; keep the current bundle if it is refused."""
        try:
            predictor = open_bundle(self.settings, self.desired.poor_model_threshold)
        except BundleError as err:
            logger.error("Reload refused: %s", err)
            return 409, {"error": str(err), "bundleVersion": self.predictor.version}
        self._post(_Swap(predictor))
        previous = self.predictor.version
        self.predictor = predictor
        self._check_version()
        logger.info("Reloaded bundle %s (was %s)", predictor.version, previous)
        self.link.report(self.reported())
        return 200, {
            "bundleVersion": predictor.version,
            "previous": previous,
            "devices": len(predictor.reader.manifest.devices),
        }

    def reported(self) -> dict[str, Any]:
        """Return the twin's reported properties."""
        stats = self.stats()
        outbox = stats.pop("outbox")
        return {
            **self.desired.model_dump(by_alias=True),  # the effective values, named as in the manifest
            "bundleVersion": self.predictor.version,
            "bundleStatus": self.bundle_status(),
            "configError": self.config_error,
            "drift": {"drifting": self.drifting_devices()[:MAX_REPORTED_DRIFTING]},
            "counters": {
                **stats,
                "messages_out": outbox["sent"].get(PREDICTIONS, 0),
                "units_4kb": outbox["units_4kb"].get(PREDICTIONS, 0),
            },
        }

    # -- lifecycle --------------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        self.link.on_input(self.on_input)
        self.link.on_desired_patch(self.apply_desired)
        self.link.on_method("stats", lambda payload: (200, self.stats()))
        self.link.on_method("reset", lambda payload: (200, self.reset()))
        self.link.on_method("reload", self.reload)

    def start(self, stop_event: threading.Event | None = None) -> bool:
        """Start the worker threads, connect, apply the twin and replay the spool; False if stopped first."""
        self._worker = threading.Thread(target=self._work_loop, name="inference-worker", daemon=True)
        self._loader = threading.Thread(target=self._load_loop, name="inference-loader", daemon=True)
        self._loader.start()
        if not self.link.connect(stop_event, self._register_handlers):
            return False
        self.link.apply_twin()
        # Only now: readings that arrived while the twin was read wait in the queue, so none is
        # routed with defaults the deployment overrides (poorModelThreshold).
        self._worker.start()
        replayed = self.spool.replay(self._post)
        if replayed:
            threading.Thread(target=self._forget_spool, args=(replayed,), daemon=True).start()
        return True

    def _forget_spool(self, files: list[Path]) -> None:
        if self.wait_idle(DRAIN_TIMEOUT_S) and self.outbox.drain(DRAIN_TIMEOUT_S):
            self.spool.forget(files)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued message (and every reading waiting for its model) is answered."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy or self._loading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def stop(self) -> None:
        """Answer what has arrived, send it, disconnect; keep late arrivals in the spool."""
        with self._lock:
            self._handover = []  # from now on, arrivals wait in memory for the spool
        # One budget for both waits, less what disconnecting takes: with edgeHub gone, SIGTERM
        # still ends the module within DRAIN_TIMEOUT_S.
        deadline_s = time.monotonic() + DRAIN_TIMEOUT_S - STOP_RESERVE_S
        if not self.wait_idle(DRAIN_TIMEOUT_S - STOP_RESERVE_S):
            logger.error("Stopping with %d message(s) not processed", self._busy)
        if not self.outbox.drain(max(0.0, deadline_s - time.monotonic())):
            logger.error("edgeHub did not take %d message(s) before stopping", self.outbox.pending())
        self.link.report(self.reported())
        self.link.shutdown()
        # The SDK may still hand over messages it acknowledged just before disconnecting.
        while time.monotonic() - self._last_arrival_s < HANDOVER_QUIET_S:
            time.sleep(HANDOVER_QUIET_S / 3)
        with self._lock:
            late, self._handover = self._handover or [], None
        self.spool.write(late)
        self.outbox.close()
        self._loads.put(None)

    def run(self, stop_event: threading.Event) -> int:
        """Run until `stop_event` is set; report the twin every `report_interval_s`."""
        if not self.start(stop_event):
            logger.info("Stopped before edgeHub was reachable")
            self.outbox.close()
            self.link.shutdown()
            return 0
        logger.info("Inference module ready")
        try:
            while not stop_event.wait(self.settings.report_interval_s):
                self.link.report(self.reported())
                if self.link.healthy():  # a deaf module must turn unhealthy, so that it gets restarted
                    touch_health(self.settings.health_file)
        finally:
            self.stop()
        return 0
