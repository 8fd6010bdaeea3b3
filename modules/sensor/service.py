"""The sensor service: field MQTT in, validated, stamped and batched telemetry out to edgeHub.

paho acknowledges a field message (PUBACK) as soon as `on_message` returns, long before its
readings leave the open batch and the outbox. So each field message is first appended to a
write-ahead journal (`edgefleet.journal`, under STATE_DIR): every piece of pending work carrying
its data (the handling itself, the open batch, each batch or dead letter in the outbox) holds a
reference to its segment, released once edgeHub acknowledged that work. What a kill -9 leaves in
the journal is handled again at the next start, before the field client connects. Replayed
readings may have been delivered already (a segment is freed only once all of it was): the
lake then holds them twice, and its readers count a reading once per (device_id, seq)
(retraining: `cloud_training.retrain_policy.fresh_readings`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.desired import SensorDesired
from edgefleet.endpoints import DEADLETTER, SENSOR, TELEMETRY
from edgefleet.errors import StartError
from edgefleet.filemodes import private_dir
from edgefleet.health import touch_health
from edgefleet.journal import Journal, JournalError, Segment
from edgefleet.messages import (
    BATCH_SCHEMA,
    DEADLETTER_SCHEMA,
    OVERSIZE,
    DeadLetter,
    MessageError,
    Reading,
    decode_payload,
    encode_json,
    encode_reading,
)
from edgefleet.mqtt_login import AUTH_REFUSALS, LoginClient, describe_connect_error, tls_context
from modules.runtime import (
    STOP_RESERVE_S,
    UNHEALTHY_EXIT_CODE,
    EdgeLink,
    LastGoodDesired,
    ModuleClient,
    Outbox,
    UnhealthyClock,
    accept_desired,
    desired_at_start,
    desired_from_patch,
)
from modules.sensor.batcher import Batch, Batcher
from modules.sensor.guards import DeviceTopic, TimestampWindow
from modules.sensor.sequence import SequenceTracker, Verdict
from modules.sensor.settings import SensorSettings

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
FIELD_QOS = 1
# Mosquitto's reconnect backoff for the field link: quick first retry, capped so a restarted
# broker is picked up within seconds.
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0
JOURNAL_DIR = "journal"  # under STATE_DIR
# Always in the stats (0 until it happens), so a dashboard can watch them.
FIELD_COUNTERS = ("journal_errors", "field_auth_refused", "field_refused", "field_tls_errors", "field_connect_failures")
# A full disk fails every append: log the first failure and then at most one summary per interval.
JOURNAL_ERROR_LOG_INTERVAL_S = 60.0


class SensorService:
    """Subscribe to the field broker and forward readings to the `telemetry` output."""

    def __init__(self, settings: SensorSettings, client: ModuleClient, field_client: mqtt.Client | None = None) -> None:
        self.settings = settings
        self.link = EdgeLink(client, SENSOR)
        self.desired = SensorDesired.before_twin()  # subscribed to nothing until the twin is read
        self.config_error: str | None = None
        self._last_good = LastGoodDesired(settings.state_dir)
        self.journal = _open_journal(settings.state_dir / JOURNAL_DIR)
        self.outbox = Outbox(self.link.send, threads=2, max_pending=settings.max_pending_batches)
        self._lock = threading.Condition()
        self._batcher = Batcher(self.desired.batch_window_ms, self.desired.max_batch_bytes, self.journal.acquire)
        self._sequences = SequenceTracker(settings.seq_jump_limit)
        self._window = TimestampWindow(
            timedelta(seconds=settings.max_reading_age_s), timedelta(seconds=settings.max_clock_skew_s)
        )
        self._device_topic = DeviceTopic(self.desired.field_topic)
        self._counters: Counter[str] = Counter()
        self._deadletters: Counter[str] = Counter()
        self._field_connected = False
        # Why the field link is down (a refusal, a TLS failure), for the health message and the stats.
        self._field_problem: str | None = None
        self._subscribed: str | None = None
        self._stopping = threading.Event()
        self._journal_error_logged_s: float | None = None
        self.field = field_client or self._make_field_client()

    # -- field MQTT -------------------------------------------------------------------------------

    def _make_field_client(self) -> mqtt.Client:
        # A persistent session (clean_session=False, fixed client id): while the sensor restarts or
        # reconnects, the field broker queues our QoS 1 readings instead of dropping them.
        settings = self.settings
        field = LoginClient(client_id=settings.field_client_id, clean_session=False, protocol=mqtt.MQTTv311)
        if settings.field_mqtt_ca_file is not None:
            field.tls_set_context(tls_context(settings.field_mqtt_ca_file))
        if settings.field_mqtt_username is not None and settings.field_mqtt_password_file is not None:
            field.username_pw_set(
                settings.field_mqtt_username, settings.field_mqtt_password_file.password.get_secret_value()
            )
            if not settings.field_tls:
                logger.warning(
                    "FIELD_MQTT_USERNAME is set without FIELD_MQTT_CA_FILE: the field password crosses the "
                    "network in clear text; set FIELD_MQTT_CA_FILE to connect with TLS"
                )
        # paho doubles the wait after every failed attempt (refused credentials included) up to the cap.
        field.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        field.on_connect_error = self._on_field_connect_error
        field.on_connect = self._on_field_connect
        field.on_disconnect = self._on_field_disconnect
        field.on_message = self._on_field_message
        return field

    def _check_field_host(self) -> None:
        """Warn once at start when the field broker's host name does not resolve (the client keeps retrying)."""
        host, port = self.settings.field_mqtt_host, self.settings.field_mqtt_port
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            logger.warning(
                "FIELD_MQTT_HOST %r does not resolve (%s): no readings arrive until it does; "
                "check the name and the network (retrying every %.0f s)",
                host,
                err,
                RECONNECT_MAX_S,
            )

    @property
    def _field_address(self) -> str:
        scheme = "mqtts" if self.settings.field_tls else "mqtt"
        return f"{scheme}://{self.settings.field_mqtt_host}:{self.settings.field_mqtt_port}"

    def _on_field_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            self._field_refused(rc)
            return
        logger.info("Connected to the field broker %s", self._field_address)
        with self._lock:
            self._field_connected = True
            self._field_problem = None
            self._subscribed = None  # subscribe again: the broker may have lost our session
        self._sync_subscription()

    def _field_refused(self, rc: int) -> None:
        """Log and count a refused CONNECT; paho retries after its (growing) reconnect delay."""
        reason = mqtt.connack_string(rc).rstrip(".")
        if rc in AUTH_REFUSALS:
            counter = "field_auth_refused"
            problem = (
                f"the field broker {self._field_address} refused user {self.settings.field_mqtt_username!r}: "
                f"{reason}; put the right password in FIELD_MQTT_PASSWORD_FILE and restart the sensor, "
                "or fix the user in the broker's password file and reload the broker (SIGHUP)"
            )
        else:
            counter = "field_refused"
            problem = f"the field broker {self._field_address} refused the connection: {reason}"
        with self._lock:
            self._counters[counter] += 1
            self._field_problem = problem
        logger.error("%s (retrying within %.0f s)", problem, RECONNECT_MAX_S)

    def _on_field_connect_error(self, err: OSError) -> None:
        """Log and count a TLS failure (a plain network error is only counted: the broker may be starting)."""
        settings = self.settings
        what = describe_connect_error(
            err,
            tls=settings.field_tls,
            ca_setting="FIELD_MQTT_CA_FILE",
            host_setting="FIELD_MQTT_HOST",
            port_setting="FIELD_MQTT_PORT",
        )
        with self._lock:
            if what is None:
                self._counters["field_connect_failures"] += 1
                self._field_problem = f"cannot reach the field broker {self._field_address}: {err}"
                return
            self._counters["field_tls_errors"] += 1
            self._field_problem = f"cannot connect to the field broker {self._field_address}: {what}"
        logger.error("%s (FIELD_MQTT_CA_FILE=%s; retrying)", self._field_problem, settings.field_mqtt_ca_file)

    def _on_field_disconnect(self, client: mqtt.Client, userdata: Any, rc: int) -> None:
        with self._lock:
            was_connected, self._field_connected = self._field_connected, False
        # After a refused CONNECT the broker closes the socket: the refusal was logged already.
        if rc != 0 and was_connected and not self._stopping.is_set():
            logger.warning("Lost the field broker (%s); reconnecting", mqtt.error_string(rc))

    def _sync_subscription(self) -> None:
        """Subscribe to the desired topic when enabled; unsubscribe otherwise."""
        with self._lock:
            if not self._field_connected:
                return
            wanted = self.desired.field_topic if self.desired.enabled else None
            current = self._subscribed
            if wanted == current:
                return
            self._subscribed = wanted
        if current is not None:
            self.field.unsubscribe(current)
            logger.info("Unsubscribed from %s", current)
        if wanted is not None:
            self.field.subscribe(wanted, qos=FIELD_QOS)
            logger.info("Subscribed to %s", wanted)

    def _on_field_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho sends the PUBACK when this returns: the message must be in the journal by then.
        self.take_field_message(msg.topic, msg.payload)

    # -- readings ---------------------------------------------------------------------------------

    def take_field_message(self, topic: str, payload: bytes) -> None:
        """Journal one field message, then handle it; never raise (the caller is paho's network thread)."""
        segment = self._journal_append(topic, payload)
        try:
            self.handle_payload(topic, payload, segment)
        except Exception:  # never let one reading kill the field client's network thread
            logger.exception("Unexpected error handling a reading from %s", topic)
            self._dead_letter(DeadLetter("internal_error", "see the sensor's log", f"sensor/{topic}", ""), segment)
        finally:
            if segment is not None:  # the handling's own reference: what it queued holds its own
                self.journal.release(segment)

    def _journal_append(self, topic: str, payload: bytes) -> Segment | None:
        """Append a field message to the journal; on failure log, count and return None (it is still forwarded)."""
        try:
            return self.journal.append(topic, payload)
        except JournalError as err:
            # paho 1.6 acknowledges whatever on_message does, so refusing the reading would only
            # lose it now: forward it, unprotected against a crash until the disk takes writes again.
            now_s = time.monotonic()
            with self._lock:
                self._counters["journal_errors"] += 1
                errors = self._counters["journal_errors"]
                last_s = self._journal_error_logged_s
                if last_s is not None and now_s - last_s < JOURNAL_ERROR_LOG_INTERVAL_S:
                    return None
                self._journal_error_logged_s = now_s
            logger.error(
                "%s; readings are still forwarded, but a crash before edgeHub takes them loses them "
                "(%d journal error(s) so far): free disk space in, or make writable, STATE_DIR (%s)",
                err,
                errors,
                self.settings.state_dir,
            )
            return None

    def _release_all(self, segments: tuple[Segment, ...]) -> Callable[[], None] | None:
        """Return a callback that releases `segments` (None when there are none)."""
        if not segments:
            return None

        def release() -> None:
            for segment in segments:
                self.journal.release(segment)

        return release

    def handle_payload(self, topic: str, payload: bytes, segment: Segment | None = None) -> None:
        """Validate, stamp and queue the readings of one field message; dead-letter the bad ones.

        `segment` is the journal segment holding the message: everything queued here takes a
        reference to it, released once edgeHub acknowledged it; the caller keeps its own.
        """
        received = datetime.now(UTC)
        source = f"sensor/{topic}"
        with self._lock:
            self._counters["field_messages"] += 1
            max_reading_bytes = min(self.settings.max_reading_bytes, self.desired.max_reading_bytes())
        try:
            readings, errors = decode_payload(payload, max_bytes=self.settings.max_field_message_bytes)
        except MessageError as err:
            self._dead_letter(DeadLetter.from_error(err, source, payload), segment)
            return
        for item_err, item in errors:
            self._dead_letter(DeadLetter.from_item(item_err, source, item), segment)
        full_batches: list[Batch] = []
        refused: list[DeadLetter] = []
        with self._lock:
            device_topic = self._device_topic
            deadline_before = self._batcher.deadline()
            for reading in readings:
                self._counters["readings"] += 1
                try:
                    self._guard(reading, topic, device_topic, received)
                except MessageError as err:
                    refused.append(DeadLetter.from_item(err, source, reading.to_json_obj()))
                    continue
                if self._sequences.observe(reading.device_id, reading.seq) is Verdict.DUPLICATE:
                    continue  # a QoS 1 redelivery: forwarded already (it holds no journal reference)
                body = encode_reading(reading.stamped(received))
                if len(body) > max_reading_bytes:
                    too_big = MessageError(OVERSIZE, f"reading is {len(body)} bytes; at most {max_reading_bytes} fit")
                    refused.append(DeadLetter.from_error(too_big, source, body))
                    continue
                full = self._batcher.add(body, time.monotonic(), segment)
                if full is not None:
                    full_batches.append(full)
                self._counters["forwarded"] += 1
            if self._batcher.deadline() != deadline_before:
                # Only a new deadline concerns the flusher: waking it for every message would make
                # it contend for the GIL each time the journal's write releases it.
                self._lock.notify()
        for dead in refused:
            self._dead_letter(dead, segment)
        for batch in full_batches:
            self._send_batch(batch)

    def _guard(self, reading: Reading, topic: str, device_topic: DeviceTopic, now: datetime) -> None:
        """Raise MessageError when a well-formed reading is dated implausibly or speaks for another device."""
        # The topic first: a reading published for another device says nothing trustworthy about time.
        device_topic.check(topic, reading.device_id)
        self._window.check(reading.ts, now)

    def _send_batch(self, batch: Batch) -> None:
        """Queue a batch; the references it carries are released once edgeHub acknowledged it."""
        self.outbox.put(TELEMETRY, batch.body, {"schema": BATCH_SCHEMA}, on_sent=self._release_all(batch.segments))

    def _dead_letter(self, dead: DeadLetter, segment: Segment | None = None) -> None:
        """Queue a dead letter, holding a reference to its field message's segment until edgeHub has it."""
        with self._lock:
            self._deadletters[dead.reason] += 1
        logger.debug("Dead-lettered a reading: %s (%s)", dead.reason, dead.detail)
        segments: tuple[Segment, ...] = ()
        if segment is not None:
            self.journal.acquire(segment)
            segments = (segment,)
        body = encode_json(dead.to_json_obj())
        self.outbox.put(DEADLETTER, body, _dead_props(dead), on_sent=self._release_all(segments))

    def _flush_loop(self) -> None:
        """Send the open batch when its window has passed."""
        while True:
            with self._lock:
                deadline = self._batcher.deadline()
                now = time.monotonic()
                if self._stopping.is_set():
                    return
                if deadline is None or deadline > now:
                    self._lock.wait(None if deadline is None else deadline - now)
                    continue
                batch = self._batcher.take()
            if batch is not None:
                self._send_batch(batch)

    # -- twin and methods -------------------------------------------------------------------------

    def apply_desired(self, patch: Mapping[str, Any]) -> None:
        """Apply a desired-properties patch strictly; when rejected keep the last good values and report why."""
        accept_desired(
            desired_from_patch(self.desired, patch, self._last_good), self._use_desired, self._reject_desired
        )

    def _apply_desired_at_start(self, twin: Mapping[str, Any]) -> None:
        """Apply the twin's whole desired set, or the last good one saved when the twin's is rejected."""
        outcome = desired_at_start(SensorDesired, twin, self._last_good)
        accept_desired(outcome, self._use_desired, self._reject_desired)

    def _reject_desired(self, error: str) -> None:
        logger.error("%s", error)
        with self._lock:
            self.config_error = error
        self.link.report(self.reported())

    def _use_desired(self, desired: SensorDesired, config_error: str | None) -> None:
        full = None
        with self._lock:
            self.desired, self.config_error = desired, config_error
            self._device_topic = DeviceTopic(desired.field_topic)
            if (desired.batch_window_ms, desired.max_batch_bytes) != (
                self._batcher.window_ms,
                self._batcher.max_bytes,
            ):
                full = self._batcher.take()
                self._batcher = Batcher(desired.batch_window_ms, desired.max_batch_bytes, self.journal.acquire)
            self._lock.notify()
        if full is not None:
            self._send_batch(full)
        logger.info(
            "Desired: topic=%s enabled=%s window=%d ms max=%d bytes",
            desired.field_topic,
            desired.enabled,
            desired.batch_window_ms,
            desired.max_batch_bytes,
        )
        self._sync_subscription()
        self.link.report(self.reported())

    def stats(self) -> dict[str, Any]:
        """Return the module's counters."""
        with self._lock:
            counters: dict[str, Any] = dict(self._counters)
            counters.update(self._sequences.counters())
            counters["deadletters"] = dict(self._deadletters)
            counters["field_connected"] = self._field_connected
            counters["subscribed"] = self._subscribed
            counters["open_batch_readings"] = len(self._batcher)
            for name in FIELD_COUNTERS:
                counters.setdefault(name, 0)
            counters["field_problem"] = None if self._field_connected else self._field_problem
        counters["journal"] = self.journal.stats()
        counters["outbox"] = self.outbox.stats()
        return counters

    def reset(self) -> dict[str, Any]:
        """Zero the counters; return their values before."""
        before = self.stats()
        with self._lock:
            self._counters.clear()
            self._deadletters.clear()
            self._sequences.reset()
        self.outbox.reset()
        return before

    def reported(self) -> dict[str, Any]:
        """Return the twin's reported properties: effective settings, counters, last config error."""
        stats = self.stats()
        outbox = stats.pop("outbox")
        return {
            **self.desired.model_dump(by_alias=True),  # the effective values, named as in the manifest
            "configError": self.config_error,
            "counters": {
                **stats,
                "batches_sent": outbox["sent"].get(TELEMETRY, 0),
                "units_4kb": outbox["units_4kb"].get(TELEMETRY, 0),
            },
        }

    # -- lifecycle --------------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        self.link.on_desired(self._apply_desired_at_start, self.apply_desired)
        self.link.on_method("stats", lambda payload: (200, self.stats()))
        self.link.on_method("reset", lambda payload: (200, self.reset()))

    def start(self, stop_event: threading.Event | None = None) -> bool:
        """Connect to edgeHub, read the twin, then start reading the field broker; False if stopped first."""
        if not self.link.connect(stop_event, self._register_handlers):
            return False
        self.link.apply_twin()
        threading.Thread(target=self._check_field_host, name="sensor-field-dns", daemon=True).start()
        self._flusher = threading.Thread(target=self._flush_loop, name="sensor-flush", daemon=True)
        self._flusher.start()
        self._replay_journal()  # before the field client: replayed readings come first, in order
        self.field.connect_async(
            self.settings.field_mqtt_host, self.settings.field_mqtt_port, self.settings.field_keepalive_s
        )
        self.field.loop_start()
        return True

    def _replay_journal(self) -> None:
        """Handle again what a previous run journaled but edgeHub never acknowledged, then drop the old segments.

        Some of it may have been delivered (a segment is freed only when all of it was): those
        readings reach the lake twice, the same (device_id, seq), and are counted once there.
        """
        messages = 0
        with self._lock:
            readings_before = self._counters["readings"]
        for record in self.journal.recover():
            self.take_field_message(record.key, record.payload)  # journaled again, in new segments
            messages += 1
        self.journal.forget_recovered()
        with self._lock:
            self._counters["replayed_messages"] += messages
            readings = self._counters["readings"] - readings_before
        if messages:
            logger.warning(
                "Replayed %d field message(s) (%d reading(s)) that a previous run had taken but not "
                "delivered to edgeHub; some may reach the lake twice (same device_id and seq)",
                messages,
                readings,
            )

    def stop(self) -> None:
        """Stop reading the field, send what is batched and queued, then disconnect."""
        self._stopping.set()
        # Disconnecting first keeps the field session: the broker queues what arrives meanwhile.
        self.field.disconnect()
        self.field.loop_stop()
        with self._lock:
            self._lock.notify_all()
            last = self._batcher.take()
        if last is not None:
            self._send_batch(last)
        # Less what disconnecting takes: with edgeHub gone, SIGTERM still ends the module within DRAIN_TIMEOUT_S.
        if not self.outbox.drain(DRAIN_TIMEOUT_S - STOP_RESERVE_S):
            logger.error("edgeHub did not take %d message(s) before stopping", self.outbox.pending())
        self.link.report(self.reported())
        self.outbox.close()
        self.link.shutdown()
        # What edgeHub did not take stays in the journal's segments and is replayed at the next start.
        self.journal.close()

    def _health_problem(self) -> str | None:
        """Return why the module cannot receive; None when edgeHub and the field are both subscribed as desired."""
        with self._lock:
            wanted = self.desired.field_topic if self.desired.enabled else None
            connected, subscribed, problem = self._field_connected, self._subscribed, self._field_problem
        if not self.link.healthy():
            return "the edgeHub link is not connected and subscribed"
        if not connected:
            return f"the field broker {self._field_address} is not connected" + (f" ({problem})" if problem else "")
        if subscribed != wanted:
            return f"the field subscription is {subscribed!r}, desired {wanted!r}"
        return None

    def run(self, stop_event: threading.Event) -> int:
        """Run until `stop_event` is set or the module stays unhealthy too long; report every `report_interval_s`."""
        clock = UnhealthyClock(self.settings.unhealthy_exit_s, time.monotonic())
        if not self.start(stop_event):
            logger.info("Stopped before edgeHub was reachable")
            self.outbox.close()
            self.link.shutdown()
            self.journal.close()
            return 0
        exit_code = 0
        try:
            while not stop_event.wait(self.settings.report_interval_s):
                self.link.report(self.reported())
                problem, now_s = self._health_problem(), time.monotonic()
                if problem is None:  # a deaf module must turn unhealthy, so that it gets restarted
                    touch_health(self.settings.health_file)
                    clock.observe(True, now_s)
                elif clock.observe(False, now_s):
                    logger.error("%s", clock.giving_up("sensor", problem, now_s))
                    exit_code = UNHEALTHY_EXIT_CODE
                    break
        finally:
            self.stop()
        return exit_code


def _open_journal(folder: Path) -> Journal:
    """Open the sensor's journal; raise StartError saying how to fix a folder that cannot be created."""
    how = "set STATE_DIR to a directory the sensor's user can create and write (a volume kept across restarts)"
    try:
        private_dir(folder.parent)  # STATE_DIR: the journal and the last good desired set, owner only
        journal = Journal(folder)
    except (JournalError, OSError) as err:
        raise StartError(f"cannot create the journal folder {folder} ({err.__cause__ or err}); {how}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartError(f"cannot write the journal folder {folder} (permission denied); {how}")
    return journal


def _dead_props(dead: DeadLetter) -> dict[str, str]:
    return {"schema": DEADLETTER_SCHEMA, "reason": dead.reason}
