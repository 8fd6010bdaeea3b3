"""The inference service: telemetry in, one prediction per reading out, bad input dead-lettered.

Threads: the SDK's MQTT thread only journals and queues what arrives; one worker decodes,
routes and predicts (many readings per model call); one loader thread reads device models into
the LRU (sha256-checked), so a cache miss delays only that device's readings, never the message
path; the outbox threads send.

Nothing acknowledged is lost: edgeHub gets the PUBACK of a message when the input handler returns
(EdgeLink.on_input), long before the module has answered it, so the handler appends it to the write-ahead journal
(modules.inference.inbox). Every output carrying its readings (prediction batches, dead letters,
drift alerts) holds a reference to its journal segment until edgeHub acknowledged that output, and
the processing round holds one until it is done; a segment is deleted when the last is released.
Predictions of several rounds are coalesced (modules.inference.coalesce: twin desired `upstreamWindowMs`,
`upstreamMaxBytes`) and sent gzip-compressed (edgefleet.envelope); the open batch holds its readings'
segments until edgeHub acknowledged the compressed message.
A kill -9 or a stop leaves the unanswered messages in the journal; the next start answers them
first (duplicates are possible, and removed by (device_id, seq) where predictions land).

At start the bundle's files are verified on a thread while the module connects and answers: the
outbox holds everything until they match (a large bundle's hashing overlaps the upstream window),
and a refused bundle's answers are dropped unsent, their messages left in the journal, exit 2.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from edgefleet.alerts import ALERT_SCHEMA, DriftAlert
from edgefleet.bundle import Route
from edgefleet.desired import InferenceDesired
from edgefleet.endpoints import ALERTS, DEADLETTER, INFERENCE, PREDICTIONS, TELEMETRY
from edgefleet.envelope import compress_body
from edgefleet.errors import BundleError
from edgefleet.health import touch_health
from edgefleet.journal import Journal, JournalError, Segment
from edgefleet.messages import (
    BATCH_SCHEMA,
    DEADLETTER_DETAIL_CHARS,
    DEADLETTER_SCHEMA,
    INTERNAL_ERROR,
    MODEL_KINDS,
    NO_FEATURES,
    PREDICTION_FAILED,
    DeadLetter,
    EdgeInfo,
    MessageError,
    PredictionInfo,
    Reading,
    decode_payload,
    encode_json,
    format_ts,
    payload_text,
    prediction_json_obj,
)
from modules.inference.bundle import drift_monitor_for, open_bundle, open_bundle_verifying
from modules.inference.coalesce import Closed, Coalescer
from modules.inference.drift import DriftMonitor
from modules.inference.inbox import JOURNAL_DIR, LEGACY_SPOOL_DIR, InputMessage, legacy_spool, open_journal
from modules.inference.isolation import Quarantine, RowOutcome, describe_error, predict_each
from modules.inference.predictor import MODEL_ERROR, Choice, Predictor
from modules.inference.settings import InferenceSettings
from modules.runtime import (
    STOP_RESERVE_S,
    UNHEALTHY_EXIT_CODE,
    EdgeLink,
    LastGoodDesired,
    LatencyWindow,
    ModuleClient,
    Outbox,
    UnhealthyClock,
    accept_desired,
    desired_at_start,
    desired_from_patch,
)

if TYPE_CHECKING:
    from azure.iot.device.custom_typing import JSONSerializable

logger = logging.getLogger(__name__)

__all__ = ["InferenceService"]

# Twin documents are limited in size: report the first drifting devices, count all of them.
MAX_REPORTED_DRIFTING = 50
MAX_REPORTED_QUARANTINED = 50  # and the first quarantined devices, and the 50 most failing models
# Feature names outside the bundle are counted; the first few are named in the twin (bounded:
# a device sending a new name per reading must not grow the twin or this process).
MAX_REPORTED_UNKNOWN_FEATURES = 10
DRAIN_TIMEOUT_S = 30.0
HANDOVER_QUIET_S = 0.3  # how long the SDK must stay quiet after disconnecting before the journal closes
JOURNAL_ERROR_LOG_EVERY_S = 10.0  # a failing disk is logged once per interval, and every failure counted
STATS_WAIT_FOR_VERIFY_S = 1.0  # `stats` answers 503 while the bundle is verified: ready means verified


@dataclass(frozen=True, slots=True)
class _Loaded:
    predictor: Predictor
    device_id: str
    error: str | None


@dataclass(frozen=True, slots=True)
class _Swap:
    predictor: Predictor


@dataclass(frozen=True, slots=True)
class _Flush:
    """Send the open upstream batch now (stopping)."""


_Item = InputMessage | _Loaded | _Swap | _Flush
# A reading on its way to a model: the reading, its feature row, when it was received (wall clock, s)
# and the journal segment of the message it came in (None: not journaled).
_Entry = tuple[Reading, list[float], float, Segment | None]
# Readings that share a model call: why that model, the model itself (held, so an LRU eviction between
# routing and predicting cannot take it away), and the readings.
_Group = tuple[Choice, Any, list[_Entry]]
FLEET_AFTER_ERROR = Choice(Route("fleet", None, MODEL_ERROR))


class InferenceService:
    """Predict every reading that arrives on input `telemetry` with its device's model."""

    def __init__(self, settings: InferenceSettings, client: ModuleClient, journal: Journal | None = None) -> None:
        self.settings = settings
        # First: a STATE_DIR this process cannot write stops the start with how to fix it.
        self.journal = journal if journal is not None else open_journal(settings.state_dir / JOURNAL_DIR)
        self.desired = InferenceDesired()
        self.config_error: str | None = None
        self._last_good = LastGoodDesired(settings.state_dir)
        self.predictor, self._verified = open_bundle_verifying(settings, self.desired.poor_model_threshold)
        logger.info(
            "Bundle %s: %d devices, features %s",
            self.predictor.version,
            len(self.predictor.reader.manifest.devices),
            ", ".join(self.predictor.features),
        )
        self.link = EdgeLink(client, INFERENCE)
        # Nothing leaves before the bundle's files are verified (`_on_verified`).
        self.outbox = Outbox(self.link.send, threads=2, held=True)
        self._verified.add_done_callback(self._on_verified)
        # Predictions of several rounds go up as one compressed message (the worker's; window and cap desired).
        self._coalescer = Coalescer(
            self.desired.upstream_window_ms / 1000, self.desired.upstream_max_bytes, self.journal.acquire
        )
        self._open_predictions = 0  # predictions waiting in the coalescer (guarded by _lock, for wait_idle)
        self.latency = LatencyWindow()
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._loads: queue.Queue[tuple[Predictor, str] | None] = queue.Queue()
        self._loading: set[str] = set()
        self._pending: dict[str, list[_Entry]] = defaultdict(list)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._served: Counter[str] = Counter()  # predictions by the kind of model that answered them
        self._deadletters: Counter[str] = Counter()
        self._stopping = False  # set while stopping: late arrivals stay in the journal for the next start
        self._journal_errors = 0
        self._journal_error_logged_s = -JOURNAL_ERROR_LOG_EVERY_S
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # inbox items not yet fully processed
        self._last_arrival_s = 0.0
        self._alerted: set[str] = set()
        self._unknown_names: dict[str, None] = {}  # the first names seen, in order (a bounded ordered set)
        # Residual drift per device (worker thread only); rebuilt when the bundle changes.
        self._drift: DriftMonitor | None = None
        self._drift_version: str | None = None
        # Device models that keep failing (worker records; replaced when the bundle is).
        self._quarantine = Quarantine(settings.quarantine_after_failures)
        self._logged_errors: set[str] = set()  # internal errors whose traceback is in the log already

    # -- receiving --------------------------------------------------------------------------------

    def on_input(self, input_name: str, body: bytes, properties: Mapping[str, str]) -> None:
        """Journal one message from edgeHub, then queue it (the SDK's MQTT thread; never blocks for long).

        edgeHub gets the acknowledgement when this returns: the journal is the first thing that keeps it.
        """
        item = self._journaled(InputMessage(input_name, body, time.time()))
        with self._lock:
            self._last_arrival_s = time.monotonic()
            if self._stopping:
                self._counters["kept_for_next_start"] += 1
                late = True
            else:
                self._busy += 1
                late = False
        if not late:
            self._inbox.put(item)
        elif item.segment is None:
            logger.error("LOST a message that arrived while stopping: the journal could not keep it (see above)")

    def _journaled(self, item: InputMessage) -> InputMessage:
        """Append `item` to the journal and return it with its segment (None when the disk refused)."""
        try:
            segment = self.journal.append(item.journal_key(), item.body)
        except JournalError as err:
            now_s = time.monotonic()
            with self._lock:
                self._journal_errors += 1
                errors = self._journal_errors
                log = now_s - self._journal_error_logged_s >= JOURNAL_ERROR_LOG_EVERY_S
                if log:
                    self._journal_error_logged_s = now_s
            if log:
                logger.error(
                    "%s; messages are still answered, but a kill now loses the unanswered ones "
                    "(%d journal write error(s) so far). Free space on that disk, or point STATE_DIR at a "
                    "writable folder with room",
                    err,
                    errors,
                )
            return item
        return InputMessage(item.name, item.body, item.received_s, segment)

    def _hold(self, segments: Iterable[Segment | None]) -> tuple[Segment, ...]:
        """Add a reference to each distinct journaled segment (for one more output carrying their data)."""
        held = tuple({segment for segment in segments if segment is not None})
        for segment in held:
            self.journal.acquire(segment)
        return held

    def _release(self, segments: Iterable[Segment]) -> None:
        for segment in segments:
            self.journal.release(segment)

    def _send(
        self, output: str, body: bytes, properties: Mapping[str, str], segments: Iterable[Segment | None] = ()
    ) -> None:
        """Queue one output; it holds the journal segments of the inputs it answers until edgeHub has it."""
        held = self._hold(segments)
        self.outbox.put(output, body, properties, on_sent=partial(self._release, held) if held else None)

    def _post(self, item: _Item) -> None:
        with self._lock:
            self._busy += 1
        self._inbox.put(item)

    # -- the worker -------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            try:
                first = self._inbox.get(timeout=self._coalescer.time_left(time.monotonic()))
            except queue.Empty:  # the open upstream batch has waited its window
                self._flush_upstream()
                continue
            items = [first]
            while len(items) < self.settings.max_messages_per_round:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            # The round holds the references its messages came with (and those of readings that waited
            # for their model) until every output is queued, each output holding its own.
            held: list[Segment] = []
            try:
                self._process(items, held)
                # Each prediction in the open batch holds its segment: the round's references can go.
                if self._stopping or self._coalescer.due(time.monotonic()) or isinstance(items[-1], _Flush):
                    self._flush_upstream()
                self._release(held)
            except Exception:  # the worker must survive anything one round throws
                # What the bug cost stays in the journal (never released): the next start answers it.
                logger.exception("Unexpected error in a processing round of %d item(s)", len(items))
                with self._lock:
                    self._counters["internal_errors"] += 1
            finally:
                with self._lock:
                    self._busy -= len(items)
                    if self._busy == 0:
                        self._idle.notify_all()

    def _process(self, items: list[_Item], held: list[Segment]) -> None:
        """Answer one round of items; `held` collects the journal references the round releases when done."""
        ready: dict[tuple[str, str | None, str | None, bool], _Group] = {}
        predictor = self.predictor

        def add(choice: Choice, model: Any, entry: _Entry) -> None:
            route = choice.route
            key = (route.kind, route.device_id, route.fallback_reason, choice.fill)
            group = ready.get(key)
            if group is None:
                group = ready[key] = (choice, model, [])
            group[2].append(entry)

        def place(reading: Reading, received_s: float, segment: Segment | None) -> None:
            try:
                choice, row = predictor.choose(reading)
            except Exception as err:  # one reading's bug must not cost the round
                self._internal_error(reading, "choosing its model", err, segment)
                return
            model = predictor.ready_model(choice.route)
            device_id = choice.route.device_id
            # The loader caches a model before it says so: until the readings that waited for it
            # are answered, later ones of the device wait behind them, so its readings keep their
            # order (the drift window drops a reading older than one it already holds).
            if device_id is not None and (model is None or device_id in self._pending):
                # Waiting for its model outlives this round: the wait holds a reference of its own.
                self._hold([segment])
                self._pending[device_id].append((reading, row, received_s, segment))
                if device_id not in self._loading:
                    self._loading.add(device_id)
                    self._loads.put((predictor, device_id))
                return
            add(choice, model, (reading, row, received_s, segment))

        def place_waiting(waiting: list[_Entry]) -> None:
            for reading, _row, received_s, segment in waiting:
                if segment is not None:
                    held.append(segment)  # the wait's reference, now the round's
                place(reading, received_s, segment)

        for item in items:
            if isinstance(item, InputMessage):
                if item.segment is not None:
                    held.append(item.segment)
                for reading, received_s in self._decode(item):
                    place(reading, received_s, item.segment)
            elif isinstance(item, _Loaded):
                self._loading.discard(item.device_id)
                waiting = self._pending.pop(item.device_id, [])
                if item.error is not None:
                    self._alert(MODEL_ERROR, f"device {item.device_id}: {item.error}", key=f"load:{item.device_id}")
                place_waiting(waiting)
            elif isinstance(item, _Swap):
                predictor = self.predictor = item.predictor
                self._quarantine = Quarantine(self.settings.quarantine_after_failures)
                waiting = [entry for entries in self._pending.values() for entry in entries]
                self._pending.clear()
                self._loading.clear()
                place_waiting(waiting)
        if ready:
            self._predict_and_send(predictor, list(ready.values()))

    def _decode(self, item: InputMessage) -> list[tuple[Reading, float]]:
        source = f"{INFERENCE.name}/{item.name}"
        with self._lock:
            self._counters["messages_in"] += 1
        try:
            readings, errors = decode_payload(item.body, self.settings.max_message_bytes)
        except MessageError as err:
            self._dead_letter(DeadLetter.from_error(err, source, item.body), item.segment)
            return []
        for item_err, bad in errors:
            self._dead_letter(DeadLetter.from_item(item_err, source, bad), item.segment)
        with self._lock:
            self._counters["readings_in"] += len(readings)
        known = frozenset(self.predictor.features)
        decoded = []
        for reading in readings:
            kept = self._bundle_features_only(reading, known, source, item.segment)
            if kept is not None:
                received_s = kept.received_ts.timestamp() if kept.received_ts is not None else item.received_s
                decoded.append((kept, received_s))
        return decoded

    def _bundle_features_only(
        self, reading: Reading, known: frozenset[str], source: str, segment: Segment | None
    ) -> Reading | None:
        """Return the reading with only the bundle's features (None: it had none, and is dead-lettered).

        Names the bundle does not know are counted and left out of the prediction: the model
        cannot use them, and each one sent upstream would become a lake column of its own.
        """
        unknown = [name for name, _ in reading.features if name not in known]
        if not unknown:
            return reading
        with self._lock:
            self._counters["unknown_features"] += 1
            for name in unknown:
                if len(self._unknown_names) >= MAX_REPORTED_UNKNOWN_FEATURES:
                    break
                self._unknown_names.setdefault(name)
        kept = tuple(pair for pair in reading.features if pair[0] in known)
        if not kept:
            err = MessageError(
                NO_FEATURES, f"none of the reading's features is one of the bundle's ({', '.join(sorted(known))})"
            )
            self._dead_letter(DeadLetter.from_item(err, source, reading.to_json_obj()), segment)
            return None
        return Reading(reading.device_id, reading.seq, reading.ts, kept, reading.label, reading.received_ts)

    def _predict_and_send(self, predictor: Predictor, groups: list[_Group]) -> None:
        edge_device = self.settings.edge_device_id
        version = predictor.version
        encoded: list[tuple[bytes, Segment | None]] = []  # each prediction, and the segment of its reading
        latencies: list[float] = []
        fallbacks: Counter[str] = Counter()
        served_by: Counter[str] = Counter()
        drift = self._drift_monitor(predictor)
        drift_alerts: list[tuple[DriftAlert, Segment | None]] = []
        infos: dict[tuple[Route, float], PredictionInfo] = {}
        for choice, model, entries in groups:
            served = self._serve(predictor, choice, model, entries)
            done_s = time.time()
            for (reading, row, received_s, segment), route, value in served:
                latency_ms = round((done_s - received_s) * 1000, 3)
                try:  # encoding or drift failing costs this reading, never its neighbours
                    info = infos.get((route, value))
                    if info is None:
                        info = infos[route, value] = PredictionInfo(value, route.kind, version, route.fallback_reason)
                    edge = EdgeInfo(edge_device, datetime.fromtimestamp(received_s, UTC), latency_ms)
                    body = encode_json(prediction_json_obj(reading, info, edge))
                    alerts: list[DriftAlert] = []
                    if drift is not None:
                        # A reading predicted on filled-in features measures the fill, not the model: only
                        # the features it carries are judged (the missing ones are NaN in `row`).
                        label = None if choice.fill else reading.label
                        alerts = drift.observe(reading.device_id, row, value, label, reading.ts)
                except Exception as err:
                    self._internal_error(reading, "answering it", err, segment)
                    continue
                encoded.append((body, segment))
                latencies.append(latency_ms)
                drift_alerts += [(alert, segment) for alert in alerts]
                served_by[route.kind] += 1
                if route.fallback_reason is not None:
                    fallbacks[route.fallback_reason] += 1
        self._send_round(encoded, drift_alerts)
        self.latency.add_many(latencies)
        with self._lock:
            self._counters["drift_alerts"] += len(drift_alerts)
            self._counters["predictions"] += len(encoded)
            self._counters["device_model"] += served_by["device"]
            self._served.update(served_by)
            self._fallbacks.update(fallbacks)

    def _serve(
        self, predictor: Predictor, choice: Choice, model: Any, entries: list[_Entry]
    ) -> list[tuple[_Entry, Route, float]]:
        """Predict one group; what its model cannot answer goes to the fleet model, then to the dead letters."""
        route = choice.route
        outcomes = predict_each(predictor, model, choice, [entry[1] for entry in entries])
        if route.device_id is not None:
            self._record_model_outcomes(predictor, route.device_id, outcomes)
        served: list[tuple[_Entry, Route, float]] = []
        failed: list[tuple[_Entry, str]] = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, str):
                failed.append((entry, outcome))
            else:
                served.append((entry, route, outcome))
        if not failed:
            return served
        with self._lock:
            self._counters["model_errors"] += len(failed)
        if route.device_id is None:  # the fleet model itself could not answer: nothing left to ask
            logger.error(
                "The fleet model (%s) failed %d reading(s): %s", route.fallback_reason, len(failed), failed[0][1]
            )
            for (reading, _, _, segment), error in failed:
                detail = f"device {reading.device_id}: the fleet model ({route.fallback_reason}) failed: {error}"
                self._reading_failed(reading, PREDICTION_FAILED, detail, segment)
            return served
        logger.warning(
            "Model of %s failed %d of %d reading(s); the fleet model answers them: %s",
            route.device_id,
            len(failed),
            len(entries),
            failed[0][1],
        )
        fleet_route = FLEET_AFTER_ERROR.route
        fleet = predictor.ready_model(fleet_route)
        retried = predict_each(predictor, fleet, FLEET_AFTER_ERROR, [entry[1] for entry, _ in failed])
        for (entry, error), outcome in zip(failed, retried, strict=True):
            if isinstance(outcome, str):
                with self._lock:
                    self._counters["model_errors"] += 1
                detail = f"device {route.device_id}: its model failed ({error}); the fleet model failed too ({outcome})"
                self._reading_failed(entry[0], PREDICTION_FAILED, detail, entry[3])
            else:
                served.append((entry, fleet_route, outcome))
        return served

    def _record_model_outcomes(self, predictor: Predictor, device_id: str, outcomes: list[RowOutcome]) -> None:
        """Count a device model's failures; quarantine it (fleet model, one alert) after a run of them."""
        error = self._quarantine.record(device_id, outcomes)
        if error is None:
            return
        predictor.mark_broken(device_id, error)
        limit = self._quarantine.limit
        logger.error(
            "Quarantined the model of %s after %d failed readings in a row; the fleet model serves it until "
            "a bundle reload: %s",
            device_id,
            limit,
            error,
        )
        self._alert(
            MODEL_ERROR,
            f"device {device_id}: model quarantined after {limit} failed readings in a row, the fleet model "
            f"serves it until a bundle reload: {error}",
            key=f"quarantine:{predictor.version}:{device_id}",
        )

    def _send_round(
        self, encoded: list[tuple[bytes, Segment | None]], drift_alerts: list[tuple[DriftAlert, Segment | None]]
    ) -> None:
        """Add the round's predictions to the open upstream batch (sending any it fills) and send its drift alerts."""
        now_s = time.monotonic()
        for body, segment in encoded:
            closed = self._coalescer.add(body, segment, now_s)
            if closed is not None:  # the cap: closed without `body`, which opens the next batch
                self._send_upstream(closed)
        with self._lock:
            self._open_predictions = len(self._coalescer)
        edge_device = self.settings.edge_device_id
        for alert, segment in drift_alerts:  # modules.inference.drift logs each one
            try:
                body = encode_json(alert.to_json_obj(edge_device))
            except Exception:  # one unwritable alert must not cost the others
                logger.exception("Drift alert for %s cannot be encoded; not sent", alert.device_id)
                with self._lock:
                    self._counters["internal_errors"] += 1
                continue
            self._send(ALERTS, body, {"schema": ALERT_SCHEMA, "kind": "drift"}, [segment])

    def _flush_upstream(self) -> None:
        """Send the open upstream batch, if any (worker thread)."""
        try:
            closed = self._coalescer.take()
            if closed is not None:
                self._send_upstream(closed)
        except Exception:  # never lose the worker; what the batch held stays in the journal for the next start
            logger.exception("Sending a batch of predictions upstream failed")
            with self._lock:
                self._counters["internal_errors"] += 1
        finally:
            with self._lock:
                self._open_predictions = len(self._coalescer)
                if self._busy == 0:
                    self._idle.notify_all()

    def _send_upstream(self, closed: Closed) -> None:
        """Compress a closed batch and queue it to `predictions`; its segments are released once edgeHub has it."""
        body, encoding = compress_body(closed.body)
        on_sent = partial(self._release, closed.segments) if closed.segments else None
        self.outbox.put(PREDICTIONS, body, {"schema": BATCH_SCHEMA}, on_sent=on_sent, content_encoding=encoding)
        with self._lock:
            self._counters["upstream_messages"] += 1
            self._counters["upstream_bytes_before_compression"] += len(closed.body)

    def unknown_feature_names(self) -> list[str]:
        """Return the first feature names seen that the bundle does not know (at most MAX_REPORTED_UNKNOWN_FEATURES)."""
        with self._lock:
            return list(self._unknown_names)

    def _drift_monitor(self, predictor: Predictor) -> DriftMonitor | None:
        """Return the drift monitor of `predictor`'s bundle, building it on the bundle's first use."""
        if self._drift_version == predictor.version:
            return self._drift
        try:
            self._drift = drift_monitor_for(predictor)
        except Exception:  # drift is advice: without it every reading is still answered
            logger.exception("Drift monitor for bundle %s cannot be built; drift is not judged", predictor.version)
            self._drift = None
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

    def _reading_failed(self, reading: Reading, reason: str, detail: str, segment: Segment | None) -> None:
        """Dead-letter one valid reading the module could not answer."""
        try:
            payload = payload_text(encode_json(reading.to_json_obj()))
        except Exception:  # the reading itself may be what cannot be written
            payload = f"device_id={reading.device_id!r} seq={reading.seq}"
        source = f"{INFERENCE.name}/{TELEMETRY}"
        # A model's error text may hold anything, even a lone surrogate JSON cannot carry as UTF-8.
        detail = detail[:DEADLETTER_DETAIL_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
        self._dead_letter(DeadLetter(reason, detail, source, payload), segment)

    def _internal_error(self, reading: Reading, step: str, err: Exception, segment: Segment | None) -> None:
        """Dead-letter a reading a bug stopped; log the first traceback of each kind, then one line each."""
        kind = f"{step}:{type(err).__name__}"
        first = kind not in self._logged_errors
        self._logged_errors.add(kind)
        logger.error("Device %s seq %d: %s failed: %s", reading.device_id, reading.seq, step, err, exc_info=first)
        self._reading_failed(
            reading, INTERNAL_ERROR, f"device {reading.device_id}: {step} failed: {describe_error(err)}", segment
        )

    def _dead_letter(self, dead: DeadLetter, segment: Segment | None) -> None:
        """Send one dead letter; it holds the journal segment of the message it came from until edgeHub has it."""
        with self._lock:
            self._deadletters[dead.reason] += 1
        logger.debug("Dead-lettered: %s (%s)", dead.reason, dead.detail)
        body = encode_json(dead.to_json_obj())
        self._send(DEADLETTER, body, {"schema": DEADLETTER_SCHEMA, "reason": dead.reason}, [segment])

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
        """Apply a desired-properties patch strictly; when rejected keep the last good values and report why."""
        accept_desired(
            desired_from_patch(self.desired, patch, self._last_good), self._use_desired, self._reject_desired
        )

    def _apply_desired_at_start(self, twin: Mapping[str, Any]) -> None:
        """Apply the twin's whole desired set, or the last good one saved when the twin's is rejected."""
        accept_desired(
            desired_at_start(InferenceDesired, twin, self._last_good), self._use_desired, self._reject_desired
        )

    def _reject_desired(self, error: str) -> None:
        logger.error("%s", error)
        self.config_error = error
        self.link.report(self.reported())

    def _use_desired(self, desired: InferenceDesired, config_error: str | None) -> None:
        self.desired, self.config_error = desired, config_error
        self._coalescer.configure(desired.upstream_window_ms / 1000, desired.upstream_max_bytes)
        logging.getLogger().setLevel(desired.log_level)
        if desired.poor_model_threshold != self.predictor.poor_model_threshold:
            self.predictor.set_poor_model_threshold(desired.poor_model_threshold)
        self._check_version()
        logger.info(
            "Desired: expectedBundleVersion=%s poorModelThreshold=%s logLevel=%s upstreamWindowMs=%d "
            "upstreamMaxBytes=%d",
            desired.expected_bundle_version,
            desired.poor_model_threshold,
            desired.log_level,
            desired.upstream_window_ms,
            desired.upstream_max_bytes,
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
        """Return 'verifying', 'refused', 'ok', or 'version_mismatch' when the twin expects another bundle."""
        if not self._verified.done():
            return "verifying"
        if self._verified.result() is not None:
            return "refused"
        expected = self.desired.expected_bundle_version
        return "ok" if expected is None or expected == self.predictor.version else "version_mismatch"

    def stats(self) -> dict[str, Any]:
        """Return the module's counters and latency percentiles."""
        with self._lock:
            counters: dict[str, Any] = dict(self._counters)
            counters["fallbacks"] = dict(self._fallbacks)
            counters["served_by_model"] = {kind: self._served[kind] for kind in sorted(MODEL_KINDS)}
            counters["deadletters"] = dict(self._deadletters)
            counters.setdefault("unknown_features", 0)
            counters["waiting_for_model"] = sum(len(entries) for entries in self._pending.values())
        counters.setdefault("model_errors", 0)
        counters["quarantined_devices"] = len(self._quarantine.quarantined())
        counters["model_failures"] = self._quarantine.failures(MAX_REPORTED_QUARANTINED)
        counters["drifting_devices"] = len(self.drifting_devices())
        counters["drift_flatlined"] = self._drift.flatlined_readings if self._drift is not None else 0
        counters["latency"] = self.latency.percentiles()
        counters["cached_model_bytes"] = self.predictor.reader.cached_bytes
        counters["outbox"] = self.outbox.stats()
        with self._lock:
            write_errors = self._journal_errors
        # Cumulative (a reset leaves it): segments_pending > 0 long after a quiet spell means stuck answers.
        counters["journal"] = {**self.journal.stats(), "write_errors": write_errors}
        return counters

    def reset(self) -> dict[str, Any]:
        """Zero the counters; return their values before."""
        before = self.stats()
        with self._lock:
            self._counters.clear()
            self._fallbacks.clear()
            self._served.clear()
            self._deadletters.clear()
            self._unknown_names.clear()
        self._quarantine.reset_counts()
        self.latency.reset()
        self.outbox.reset()
        return before

    def reload(self, payload: JSONSerializable = None) -> tuple[int, JSONSerializable]:
        """Re-verify and reopen the bundle directory; keep the current bundle if it is refused."""
        if not self._verified.done():
            return 409, {"error": "the bundle this module started with is still being verified; try again"}
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
            "quarantined": self._quarantine.quarantined()[:MAX_REPORTED_QUARANTINED],
            "unknownFeatureNames": self.unknown_feature_names(),
            "counters": {
                **stats,
                "messages_out": outbox["sent"].get(PREDICTIONS, 0),
                "units_4kb": outbox["units_4kb"].get(PREDICTIONS, 0),
            },
        }

    # -- lifecycle --------------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        self.link.on_input(self.on_input)
        self.link.on_desired(self._apply_desired_at_start, self.apply_desired)
        self.link.on_method("stats", self._answer_stats)
        self.link.on_method("reset", lambda payload: (200, self.reset()))
        self.link.on_method("reload", self.reload)

    def _answer_stats(self, payload: JSONSerializable = None) -> tuple[int, JSONSerializable]:
        """Answer `stats` once the bundle is verified (503 before, and when it was refused): ready means verified."""
        try:
            refusal = self._verified.result(timeout=STATS_WAIT_FOR_VERIFY_S)
        except TimeoutError:
            return 503, {"error": f"bundle {self.predictor.version} is being verified; ask again"}
        if refusal is not None:
            return 503, {"error": str(refusal)}
        return 200, self.stats()

    def _on_verified(self, verified: Future[BundleError | None]) -> None:
        """Let the outbox send once the bundle's files match; drop what it answered when they do not."""
        if verified.result() is None:
            self.outbox.release()
        else:
            self.outbox.discard()  # their messages stay in the journal for a start with a good bundle

    def start(self, stop_event: threading.Event | None = None) -> bool:
        """Queue what the journal kept, start the worker threads, connect and apply the twin; False if stopped first."""
        self._worker = threading.Thread(target=self._work_loop, name="inference-worker", daemon=True)
        self._loader = threading.Thread(target=self._load_loop, name="inference-loader", daemon=True)
        self._loader.start()
        # Before connecting: what a previous run left unanswered is answered before anything new.
        self._replay()
        if not self.link.connect(stop_event, self._register_handlers):
            return False
        self.link.apply_twin()
        # Only now: readings that arrived while the twin was read wait in the queue, so none is
        # routed with defaults the deployment overrides (poorModelThreshold).
        self._worker.start()
        return True

    def _replay(self) -> None:
        """Queue the messages a previous run left unanswered (journal, then an older release's spool), oldest first."""
        queued = kept = 0
        for record in self.journal.recover():
            try:
                item = InputMessage.from_record(record)
            except ValueError as err:
                logger.error("Skipping a journal record that is not an input message: %s", err)
                continue
            queued += 1
            kept += self._queue_again(item)
        if queued:
            logger.info("Answering %d message(s) a previous run left unanswered", queued)
        if kept == queued:
            self.journal.forget_recovered()  # each is in a new segment now
        else:
            logger.error("The journal could not keep %d replayed message(s); the old segments stay", queued - kept)
        # Releases before the journal kept messages arriving while stopping in spool/*.jsonl.
        for path, messages in legacy_spool(self.settings.state_dir / LEGACY_SPOOL_DIR):
            logger.info("Answering %d message(s) an older release kept in %s", len(messages), path)
            if sum(self._queue_again(item) for item in messages) == len(messages):
                path.unlink(missing_ok=True)

    def _queue_again(self, item: InputMessage) -> bool:
        """Journal a replayed message again and queue it; return whether the journal kept it."""
        item = self._journaled(item)
        self._post(item)
        return item.segment is not None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued message (and every reading waiting for its model) is answered and sent on."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy or self._loading or self._open_predictions:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def stop(self) -> None:
        """Answer what has arrived, send it, disconnect; what stays unanswered stays in the journal."""
        with self._lock:
            self._stopping = True  # from now on, arrivals are journaled for the next start, not queued
        if not self._verified.done():
            self.outbox.discard()  # stopped before the bundle was verified: nothing it answered may leave
        self._post(_Flush())  # after what is queued: the open upstream batch goes now, not after its window
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
        self.outbox.close()
        self.journal.close()
        pending = self.journal.stats()["segments_pending"]
        if pending:
            logger.info("%d journal segment(s) hold messages not answered yet; the next start answers them", pending)
        self._loads.put(None)

    def _wait_verified(self, stop_event: threading.Event) -> BundleError | None:
        """Wait until the bundle's files are verified (or a stop is asked for); return its refusal, if any."""
        while not stop_event.is_set():
            try:
                return self._verified.result(timeout=0.1)
            except TimeoutError:
                continue
        return None

    def run(self, stop_event: threading.Event) -> int:
        """Run until `stop_event` is set or the module stays unhealthy too long; report every `report_interval_s`."""
        clock = UnhealthyClock(self.settings.unhealthy_exit_s, time.monotonic())
        if not self.start(stop_event):
            logger.info("Stopped before edgeHub was reachable")
            self.outbox.close()
            self.journal.close()
            self.link.shutdown()
            return 0
        refusal = self._wait_verified(stop_event)
        if refusal is not None:
            self.stop()
            raise refusal
        if not stop_event.is_set():
            self.link.report(self.reported())
            logger.info("Inference module ready")
        exit_code = 0
        try:
            while not stop_event.wait(self.settings.report_interval_s):
                self.link.report(self.reported())
                now_s = time.monotonic()
                if self.link.healthy():  # a deaf module must turn unhealthy, so that it gets restarted
                    touch_health(self.settings.health_file)
                    clock.observe(True, now_s)
                elif clock.observe(False, now_s):
                    logger.error(
                        "%s", clock.giving_up("inference", "the edgeHub link is not connected and subscribed", now_s)
                    )
                    exit_code = UNHEALTHY_EXIT_CODE
                    break
        finally:
            self.stop()
        return exit_code
