"""The router half of the edgeHub stand-in: edge routes, module twins and direct methods over MQTT.

The router holds one MQTT connection per module broker (one Mosquitto per module, see
`edgehub.standin`). Because each broker serves exactly one module, the connection a
message arrives on *is* the sender's identity: events carry an authentic
`$connectionModuleId`, and twin and method topics, which name no module, are answered on the
requesting module's own broker only.

- Events (`devices/{edge}/modules/{m}/messages/events/...`) are evaluated against the
  deployment's routes (`edgefleet.routes`) and delivered to module inputs (published on the
  target module's broker, properties and content type/encoding preserved) or handed to the
  `upstream` callback (`$upstream`, the local IoT Hub sink).
- Twin GET is answered with `{"desired": {..., "$version"}, "reported": {..., "$version"}}`;
  reported PATCH is merged (JSON merge patch) and answered 204 with the new `$version`;
  `apply_desired_patch` pushes a desired patch to one module. The twins themselves (and where
  they are kept) are `edgehub.twins`'.
- `invoke_method` calls a direct method and waits for the module's answer (`edgehub.methods`).

Everything is QoS 1. Messages flow network thread -> dispatcher thread (routing, module
deliveries) -> upstream thread (the sink may be slow on a flush without holding up modules).

Store and forward (`edgehub.store`): with `hold_for_absent_modules`, a module counts as absent
until `module_connection` says it connected (the stand-in's TLS front reports each connection).
Deliveries to an absent module, and `$upstream` messages while `upstream_ready()` is false, are
held per destination (priority first, then arrival) and delivered when it is back; a held
message older than its time to live (the route's `timeToLiveSecs`, else `ttl_s`, counted from
when the router took it) is dropped and counted as `expired`. Held messages are kept in a
journal of their destination's own, so they survive a restart.

Nothing acknowledged is lost: with a `journal`, each event is appended to it on the network
thread, before paho acknowledges it to the sending module's broker, and its journal segment
stays referenced until every delivery of it is durable at the next hop (the target broker's
PUBACK for a module input; the upstream's `on_durable` for `$upstream`). After a kill, `start`
routes what the journal kept again: a message may arrive twice, never zero times.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.hub_wire import format_hub_topic, parse_hub_message
from edgefleet.journal import Journal, JournalError, Segment
from edgefleet.mqtt_tuning import enable_tcp_nodelay
from edgefleet.routes import Message, Route, RouteSink
from edgefleet.topics import (
    EVENTS_SUBSCRIPTION,
    METHOD_RESPONSES_SUBSCRIPTION,
    TWIN_REQUEST_SUBSCRIPTIONS,
    TopicError,
    format_input_topic,
    method_request_topic,
    parse_event_topic,
    parse_method_response_topic,
    parse_twin_request_topic,
    twin_desired_patch_topic,
    twin_response_topic,
)
from edgehub.acks import Callback, PubackBook
from edgehub.methods import MethodTimeoutError, PendingCalls, decode_response_payload
from edgehub.store import DEFAULT_TTL_S, HeldMessage, HeldQueue, delivery_terms, expired, held_journal, now_s
from edgehub.twins import TwinError, TwinStore, merge_patch, twin_change_notification

logger = logging.getLogger(__name__)

__all__ = ["BrokerAddress", "MethodTimeoutError", "Router", "RouterError", "merge_patch"]

ROUTER_CLIENT_ID = "edgefleet-edgehub-router"
# paho 1.6 numbers every QoS 1 publish it holds (in flight or queued) with a 16-bit message id;
# once 65,535 are pending, a new publish collides with a pending id and is refused or, in older
# releases, overwrites it. The router therefore caps its own unacknowledged publishes per broker
# far below that, and waits for PUBACKs (which a local Mosquitto sends at once) when it is full.
PUBLISH_WINDOW = 10_000
# In-flight window of the router's paho client: enough to keep a loopback connection busy.
PAHO_MAX_INFLIGHT = 1_000
KEEPALIVE_S = 30
DRAIN_TIMEOUT_S = 10.0  # how long stop() waits for queued deliveries
# Warnings about one kind of bad message are logged this many times, then only counted.
_WARN_LIMIT = 5
# How often held messages are checked for expiry (and a waiting upstream for being back).
SWEEP_INTERVAL_S = 0.5


# A request the router cannot serve (unknown module, bad patch): the twins' error.
RouterError = TwinError


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the router reaches one module's broker; TLS verified against `ca_file` when set; its credentials."""

    host: str
    port: int
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


class _Link:
    """The router's MQTT connection to one module's broker."""

    def __init__(self, module: str, address: BrokerAddress, on_message: Callable[[str, Any], None]) -> None:
        self.module = module
        self.address = address
        self.subscribed = threading.Event()
        self.closed = False
        self._on_message = on_message
        self._window = threading.Condition()
        self._outstanding = 0
        self._sub_mids: set[int] = set()
        self._acks = PubackBook(f"the broker of {module}")
        enable_tcp_nodelay()
        client = mqtt.Client(client_id=ROUTER_CLIENT_ID, clean_session=False, protocol=mqtt.MQTTv311)
        if address.ca_file is not None:
            # Hostname (here: IP) checking stays on: the router trusts the broker like a module does.
            client.tls_set(ca_certs=str(address.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        # Deliberate limits, see PUBLISH_WINDOW: paho queues without limit (0) and the router's
        # own window keeps what it holds far below the 16-bit message-id space.
        client.max_inflight_messages_set(PAHO_MAX_INFLIGHT)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=0.05, max_delay=2)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        self.client = client

    def start(self) -> None:
        """Connect in the background; paho's loop thread retries until the broker answers."""
        self.client.connect_async(self.address.host, self.address.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def close(self) -> None:
        """Refuse further publishes and wake a publisher waiting for room in the window."""
        with self._window:
            self.closed = True
            self._window.notify_all()

    def stop(self) -> None:
        """Disconnect and stop the loop thread."""
        self.close()
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (run on this link's network thread) ---------------------------------

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        """Subscribe to the module's events, twin requests and method responses."""
        if rc != 0:
            logger.warning("Router connection to %s refused: %s", self.module, mqtt.connack_string(rc))
            return
        logger.debug("Router connected to %s (session present: %s)", self.module, flags.get("session present"))
        # Subscribe on every connect: cheap, and right even if the broker lost our session.
        topics = [(EVENTS_SUBSCRIPTION, 1), *((t, 1) for t in TWIN_REQUEST_SUBSCRIPTIONS)]
        topics.append((METHOD_RESPONSES_SUBSCRIPTION, 1))
        result, mid = client.subscribe(topics)
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._sub_mids.add(mid)

    def _handle_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        """Log an unexpected disconnect (paho's loop reconnects by itself)."""
        if rc != 0 and not self.closed:
            logger.warning("Router lost its connection to %s (%s); reconnecting", self.module, mqtt.error_string(rc))

    def _handle_subscribe(self, client: Any, userdata: Any, mid: int, granted_qos: Any) -> None:
        """Mark the link ready once the broker granted every subscription."""
        if mid in self._sub_mids:
            self._sub_mids.discard(mid)
            if any(qos == 0x80 for qos in granted_qos):
                logger.error("Broker of %s refused a router subscription: %s", self.module, granted_qos)
                return
            self.subscribed.set()

    def _handle_publish(self, client: Any, userdata: Any, mid: int) -> None:
        """Free one slot of the publish window and run the publish's callback (the broker has it)."""
        with self._window:
            self._outstanding -= 1
            self._window.notify_all()
        self._acks.acknowledged(mid)

    def _handle_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """Pass an incoming message to the router, tagged with this link's module."""
        self._on_message(self.module, msg)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, wait: bool, on_ack: Callback | None = None) -> bool:
        """Publish at QoS 1 (`on_ack` runs at the PUBACK); with `wait`, wait for room first. Return if queued."""
        with self._window:
            while wait and self._outstanding >= PUBLISH_WINDOW and not self.closed:
                self._window.wait(timeout=1.0)
            if self.closed:
                return False
            # Count before publishing: the PUBACK may arrive before publish() returns.
            self._outstanding += 1
        info = self.client.publish(topic, payload, qos=1)
        # NO_CONN still keeps the message: paho sends it after reconnecting.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._window:
                self._outstanding -= 1
            logger.error("Router could not publish to %s: %s", self.module, mqtt.error_string(info.rc))
            return False
        # Outside our lock: paho runs on_publish holding its own, see edgehub.acks.
        self._acks.register(info.mid, on_ack)
        return True

    def outstanding(self) -> int:
        """Return how many of the router's publishes the broker has not acknowledged yet."""
        with self._window:
            return self._outstanding


@dataclass(frozen=True, slots=True)
class _Event:
    """A module event as received: its module, topic, payload, journal segment and when it was taken."""

    module: str
    topic: str
    payload: bytes
    segment: Segment | None
    received_s: float


@dataclass(frozen=True, slots=True)
class _Presence:
    """A module connection opened or closed (reported by the stand-in's front)."""

    module: str
    connected: bool


@dataclass(frozen=True, slots=True)
class _Upstream:
    """A `$upstream` delivery: the message, its durability callback and its store-and-forward terms."""

    message: Message
    on_durable: Callback | None
    received_s: float
    priority: int
    ttl_s: float


# An event, a generated message (taken now), a presence change, or the stop marker.
_Item = _Event | Message | _Presence | None
# The journal key of an event: `<received ms>\t<module>` (the module whose broker it came from), then its topic.
_KEY_SEPARATOR = "\n"
_TIME_SEPARATOR = "\t"


class Router:
    """Route module messages, serve module twins and call direct methods on per-module brokers."""

    def __init__(
        self,
        brokers: Mapping[str, BrokerAddress],
        edge_device: str,
        routes: Sequence[Route],
        desired: Mapping[str, Mapping[str, Any]],
        upstream: Callable[[Message, Callback | None], None],
        *,
        hub_name: str = "edgefleet-local",
        journal: Journal | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        hold_for_absent_modules: bool = False,
        upstream_ready: Callable[[], bool] | None = None,
        twins: TwinStore | None = None,
    ) -> None:
        # The stand-in passes twins kept in its state dir; without, they live in memory only.
        self._twins = twins if twins is not None else TwinStore(tuple(brokers), desired)
        self.edge_device = edge_device
        self.routes = list(routes)
        self.hub_name = hub_name
        self._upstream = upstream
        self._journal = journal  # the router's from here on: closed by stop()
        self._lock = threading.Lock()
        self._calls = PendingCalls()
        self._stats: Counter[str] = Counter()
        self._warned: Counter[str] = Counter()
        self._events: queue.Queue[_Item] = queue.Queue()
        self._upstream_queue: queue.Queue[_Upstream | None] = queue.Queue()
        self._links = {module: _Link(module, address, self._on_message) for module, address in brokers.items()}
        self.ttl_s = ttl_s
        self._upstream_ready = upstream_ready or (lambda: True)
        # Live connections per module (dispatcher thread); without presence reports every module is there.
        self._connections: dict[str, int] = {module: 0 if hold_for_absent_modules else 1 for module in brokers}
        held_folder = journal.folder if journal is not None else None
        fsync = journal.fsync if journal is not None else False
        self._held = {module: HeldQueue(module, held_journal(held_folder, module, fsync=fsync)) for module in brokers}
        self._held_upstream = HeldQueue("$upstream", held_journal(held_folder, "$upstream", fsync=fsync))
        self._expired: Counter[str] = Counter()  # per destination
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Router:
        """Start the worker threads and connect to every module broker (returns at once)."""
        if self._started:
            return self
        self._started = True
        self._threads = [
            threading.Thread(target=self._dispatch_loop, name="edgehub-dispatch", daemon=True),
            threading.Thread(target=self._upstream_loop, name="edgehub-upstream", daemon=True),
        ]
        self._restore_held()
        for thread in self._threads:
            thread.start()
        self._replay_journal()
        for link in self._links.values():
            link.start()
        return self

    def _restore_held(self) -> None:
        """Take back the messages an earlier run held for absent destinations."""
        restored = sum(queue.restore() for queue in (*self._held.values(), self._held_upstream))
        with self._lock:
            self._stats["held_restored"] += restored
        if restored:
            logger.info("Holding %d message(s) again that an earlier run kept for absent destinations", restored)

    def _replay_journal(self) -> None:
        """Route again what the journal kept from an earlier run (before the links bring new messages)."""
        if self._journal is None:
            return
        replayed, kept = 0, True
        for record in self._journal.recover():
            first, _, topic = record.key.partition(_KEY_SEPARATOR)
            received_text, _, module = first.rpartition(_TIME_SEPARATOR)
            # Keys written before received times were kept have none: the message counts as taken now.
            received_s = int(received_text) / 1000 if received_text.isdigit() else now_s()
            if module not in self._links:
                logger.warning("Journal holds a message from %r, which the stand-in no longer runs; dropped", module)
                continue
            segment = self._journal_append(module, topic, record.payload, received_s)
            kept = kept and segment is not None
            self._events.put(_Event(module, topic, record.payload, segment, received_s))
            replayed += 1
        if kept:
            self._journal.forget_recovered()
        else:  # their new copies are not all on disk: keep the old segments for the next start
            logger.error("Kept the journal's old segments in %s for the next start", self._journal.folder)
        with self._lock:
            self._stats["replayed"] += replayed
        if replayed:
            logger.info("Routing %d message(s) again that an earlier run took but had not delivered", replayed)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait until the router is connected and subscribed on every module broker."""
        deadline = time.monotonic() + timeout_s
        return all(link.subscribed.wait(max(0.0, deadline - time.monotonic())) for link in self._links.values())

    def stop(self) -> None:
        """Deliver what is already queued, then disconnect and stop the threads."""
        if not self._started:
            return
        self._started = False
        self._events.put(None)  # after everything already received: the dispatcher drains first
        self._threads[0].join(DRAIN_TIMEOUT_S)
        if self._threads[0].is_alive():
            # A broker stopped acknowledging and the window is full: give up on what is left.
            logger.warning("Router could not deliver its queue within %.0f s; dropping the rest", DRAIN_TIMEOUT_S)
            for link in self._links.values():
                link.close()
            self._threads[0].join()
        self._upstream_queue.put(None)
        self._threads[1].join()
        for link in self._links.values():
            link.stop()
        for held in (*self._held.values(), self._held_upstream):
            held.close()  # what is still held stays in its journal for the next start
        self._calls.fail_all(503)
        if self._journal is not None:
            # What is not acknowledged yet stays in it for the next start; later releases still free segments.
            self._journal.close()

    def run(self, stop_event: threading.Event) -> None:
        """Run until `stop_event` is set."""
        self.start()
        try:
            if not self.wait_ready():
                logger.warning("Router is not connected to every module broker yet; still trying")
            stop_event.wait()
        finally:
            self.stop()

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- public operations ----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return counters: received, to_module, to_upstream, unrouted, rejected, held, expired, ..., journal_*."""
        with self._lock:
            stats = dict(self._stats)
            stats["expired"] = sum(self._expired.values())
        stats["held"] = sum(self.held().values())
        if self._journal is not None:
            stats.update({f"journal_{key}": value for key, value in self._journal.stats().items()})
        return stats

    def held(self) -> dict[str, int]:
        """Return, per destination (module or `$upstream`), how many messages wait for it to be back."""
        return {name: len(queue) for name, queue in (*self._held.items(), ("$upstream", self._held_upstream))}

    def expired_counts(self) -> dict[str, int]:
        """Return, per destination, how many held messages expired (older than their time to live)."""
        with self._lock:
            return dict(self._expired)

    def module_connection(self, module: str, connected: bool) -> None:
        """Note that a module connection opened or closed (any thread); held messages follow once it is back."""
        if module in self._links:
            self._events.put(_Presence(module, connected))

    def unacknowledged(self) -> dict[str, int]:
        """Return, per module broker, how many router publishes await the broker's PUBACK."""
        return {module: link.outstanding() for module, link in self._links.items()}

    def twin(self, module: str) -> dict[str, Any]:
        """Return a copy of a module's twin (desired and reported, with `$version`s)."""
        return self._twins.document(module)

    def apply_desired_patch(self, module: str, patch: Mapping[str, Any]) -> int:
        """Merge a desired-properties patch into a module's twin, push it to that module only; return `$version`."""
        clean, version = self._twins.apply_desired(module, patch)
        with self._lock:
            self._stats["desired_patches"] += 1
        body = json.dumps({**clean, "$version": version}).encode("utf-8")
        self._links[module].publish(twin_desired_patch_topic(version), body, wait=False)
        logger.info("Pushed desired patch $version=%d to %s", version, module)
        return version

    def invoke_method(self, module: str, name: str, payload: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
        """Call direct method `name` on `module`; return (status, payload) or raise MethodTimeoutError."""
        self._twins.check(module)  # raises for an unknown module
        rid = self._calls.open(module)
        with self._lock:
            self._stats["method_calls"] += 1
        body = json.dumps(payload).encode("utf-8")
        self._links[module].publish(method_request_topic(name, rid), body, wait=False)
        answer = self._calls.wait(module, rid, timeout_s)
        if answer is None:
            raise MethodTimeoutError(
                f"Timed out waiting for device to respond to method request {rid} "
                f"({module} did not answer {name!r} within {timeout_s:g} s)"
            )
        return answer

    # -- network-thread entry -------------------------------------------------------------------

    def _on_message(self, module: str, msg: Any) -> None:
        """Sort one incoming message: events to the dispatcher, twin and method traffic handled here."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._reject(module, "topic is not UTF-8")
            return
        payload = bytes(msg.payload)
        if topic.startswith("devices/"):
            # On disk before this returns, i.e. before paho acknowledges it to the module's broker.
            received_s = now_s()
            segment = self._journal_append(module, topic, payload, received_s)
            self._events.put(_Event(module, topic, payload, segment, received_s))
        elif topic.startswith("$iothub/twin/"):
            self._handle_twin_request(module, topic, payload)
        elif topic.startswith("$iothub/methods/res/"):
            self._handle_method_response(module, topic, payload)
        else:
            self._reject(module, f"unexpected topic {topic!r}")

    def _handle_twin_request(self, module: str, topic: str, payload: bytes) -> None:
        """Answer a twin GET or reported PATCH on the requesting module's own broker."""
        link = self._links[module]
        try:
            request = parse_twin_request_topic(topic)
        except TopicError as err:
            self._reject(module, str(err))
            return
        if request.kind == "get":
            document = self._twins.document(module)
            with self._lock:
                self._stats["twin_gets"] += 1
            link.publish(twin_response_topic(200, request.rid), json.dumps(document).encode("utf-8"), wait=False)
            return
        try:
            patch = json.loads(payload.decode("utf-8"))
            if not isinstance(patch, dict):
                raise ValueError("a reported patch must be a JSON object")
        except ValueError as err:  # includes UnicodeDecodeError and JSONDecodeError
            self._reject(module, f"bad reported patch: {err}")
            link.publish(twin_response_topic(400, request.rid), b"", wait=False)
            return
        version = self._twins.apply_reported(module, patch)
        with self._lock:
            self._stats["reported_patches"] += 1
        link.publish(twin_response_topic(204, request.rid, version), b"", wait=False)
        logger.debug("Stored reported patch from %s: $version=%d", module, version)
        self._events.put(twin_change_notification(self.edge_device, module, self.hub_name, patch, version))

    def _handle_method_response(self, module: str, topic: str, payload: bytes) -> None:
        """Complete the pending call this response answers (only if it came from the called module)."""
        try:
            response = parse_method_response_topic(topic)
        except TopicError as err:
            self._reject(module, str(err))
            return
        if not self._calls.answer(module, response.rid, response.status, decode_response_payload(payload)):
            logger.info("Ignoring a method response from %s for unknown or expired request %s", module, response.rid)

    # -- journal ------------------------------------------------------------------------------

    def _journal_append(self, module: str, topic: str, payload: bytes, received_s: float) -> Segment | None:
        """Keep an event in the journal; on failure log how to fix it and route it anyway (unprotected)."""
        if self._journal is None:
            return None
        try:
            key = f"{round(received_s * 1000)}{_TIME_SEPARATOR}{module}{_KEY_SEPARATOR}{topic}"
            return self._journal.append(key, payload)
        except JournalError as err:
            with self._lock:
                self._stats["journal_errors"] += 1
                self._warned["journal"] += 1
                count = self._warned["journal"]
            if count <= _WARN_LIMIT:
                logger.error(
                    "Cannot journal a message from %s (%s): it is routed, but a crash before its delivery would "
                    "lose it; free disk space or make %s writable (EDGEHUB_STATE_DIR)",
                    module,
                    err,
                    self._journal.folder,
                )
            return None

    def _holder(self, segment: Segment | None) -> Callback | None:
        """Take one more reference to `segment` for a delivery; return the callback that drops it (once)."""
        if segment is None or self._journal is None:
            return None
        journal = self._journal
        journal.acquire(segment)
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                journal.release(segment)

        return release

    def _release(self, segment: Segment | None) -> None:
        """Drop the router's own reference to an event's segment (its deliveries hold theirs)."""
        if segment is not None and self._journal is not None:
            self._journal.release(segment)

    def _reject(self, module: str, reason: str) -> None:
        """Count a message the router cannot use; log the first few of each kind."""
        key = f"{module}:{reason.split(':')[0]}"
        with self._lock:
            self._stats["rejected"] += 1
            self._warned[key] += 1
            count = self._warned[key]
        if count <= _WARN_LIMIT:
            logger.warning("Router dropped a message from %s: %s", module, reason)

    # -- dispatcher ---------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        """Route events in arrival order until the stop marker; expire held module messages on the way."""
        next_sweep_s = time.monotonic() + SWEEP_INTERVAL_S
        while True:
            if time.monotonic() >= next_sweep_s:
                next_sweep_s = time.monotonic() + SWEEP_INTERVAL_S
                for module, held in self._held.items():
                    self._count_expired(module, held.drop_expired(now_s()))
            try:
                item = self._events.get(timeout=SWEEP_INTERVAL_S)
            except queue.Empty:
                continue
            if item is None:
                return
            segment = None
            try:
                if isinstance(item, Message):
                    self._route(item, None, now_s())
                elif isinstance(item, _Presence):
                    self._presence(item)
                else:
                    segment = item.segment
                    self._route_event(item)
            except Exception:  # one bad message must never stop the router
                logger.exception("Router failed on a message")
                with self._lock:
                    self._stats["errors"] += 1
            finally:
                self._release(segment)

    def _route_event(self, event_item: _Event) -> None:
        """Turn a module event into a routes Message, with the connection's identity, and route it."""
        module, topic, payload, segment = event_item.module, event_item.topic, event_item.payload, event_item.segment
        try:
            event = parse_event_topic(topic)
        except TopicError as err:
            self._reject(module, str(err))
            return
        if event.device_id != self.edge_device or event.module_id != module:
            # Only the connection says who sent it; a module cannot speak for another one. The
            # stand-in refuses such a client at CONNECT and its broker's ACL drops such a topic:
            # this is the last line of defence.
            self._reject(module, f"identity mismatch: topic names {event.device_id}/{event.module_id}")
            return
        message = Message(
            connection_device_id=self.edge_device,
            connection_module_id=module,
            output=event.output,
            properties=event.properties,
            system_properties=event.system_properties,
            body=payload,
        )
        with self._lock:
            self._stats["received"] += 1
        self._route(message, segment, event_item.received_s)

    def _route(self, message: Message, segment: Segment | None, received_s: float) -> None:
        """Deliver a message to every sink of every matching route; each delivery holds `segment` until durable."""
        chosen: dict[RouteSink, list[Route]] = defaultdict(list)  # each sink once, in route order
        for route in self.routes:
            if route.matches(message):
                chosen[route.sink].append(route)
        if not chosen:
            with self._lock:
                self._stats["unrouted"] += 1
            return
        for sink, routes in chosen.items():
            priority, ttl_s = delivery_terms(routes, self.ttl_s)
            if sink.kind == "upstream":
                self._upstream_queue.put(_Upstream(message, self._holder(segment), received_s, priority, ttl_s))
                with self._lock:
                    self._stats["to_upstream"] += 1
            else:
                self._deliver(sink, message, self._holder(segment), received_s, priority, ttl_s)

    def _presence(self, change: _Presence) -> None:
        """Count a module's live connections; deliver what was held for it once it has one."""
        count = max(0, self._connections[change.module] + (1 if change.connected else -1))
        self._connections[change.module] = count
        if count and len(self._held[change.module]):
            self._deliver_held(change.module)

    def _deliver_held(self, module: str) -> None:
        """Publish a module's held messages, highest priority and oldest first, dropping the expired ones."""
        held, link = self._held[module], self._links[module]
        delivered = dropped = 0
        while (message := held.pop()) is not None:
            if message.expired(now_s()):
                message.done()
                dropped += 1
                continue
            if not link.publish(message.topic, message.body, wait=True, on_ack=message.done):
                held.push_back(message)  # stopping: it stays in its journal for the next start
                break
            delivered += 1
        self._count_expired(module, dropped)
        with self._lock:
            self._stats["to_module"] += delivered
            self._stats["held_delivered"] += delivered
        if delivered:
            logger.info("Delivered %d held message(s) to %s, which is connected again", delivered, module)

    def _count_expired(self, destination: str, count: int) -> None:
        """Count and log held messages dropped past their time to live."""
        if not count:
            return
        with self._lock:
            self._expired[destination] += count
            total = self._expired[destination]
        logger.warning(
            "Dropped %d message(s) for %s older than their time to live (%d expired for it so far)",
            count,
            destination,
            total,
        )

    def _deliver(
        self,
        sink: RouteSink,
        message: Message,
        on_delivered: Callback | None,
        received_s: float,
        priority: int,
        ttl_s: float,
    ) -> None:
        """Publish a message to a module input on that module's broker, or hold it while the module is absent.

        `on_delivered` runs at the broker's PUBACK (or once the message is held in its module's journal).
        """
        assert sink.module is not None and sink.input is not None
        link = self._links.get(sink.module)
        if link is None:
            self._reject(sink.module, "route targets a module the stand-in does not run")
            if on_delivered is not None:
                on_delivered()
            return
        system = dict(message.system_properties)
        system["connectionDeviceId"] = message.connection_device_id
        if message.connection_module_id is not None:
            system["connectionModuleId"] = message.connection_module_id
        topic = format_input_topic(self.edge_device, sink.module, sink.input, message.properties, system)
        if expired(received_s, ttl_s, now_s()):  # replayed after a long stop
            self._count_expired(sink.module, 1)
            if on_delivered is not None:
                on_delivered()
            return
        held = self._held[sink.module]
        if not self._connections[sink.module] or len(held):  # absent, or behind what waits for it
            held.hold(HeldMessage(topic, message.body, received_s, priority, ttl_s), on_delivered)
            with self._lock:
                self._stats["held_total"] += 1
            return
        if link.publish(topic, message.body, wait=True, on_ack=on_delivered):
            with self._lock:
                self._stats["to_module"] += 1
        elif not link.closed and on_delivered is not None:
            on_delivered()  # paho refused this message for good (logged): replaying it would fail again
        # A closed link (stopping) keeps the reference: the journal routes the message at the next start.

    def _upstream_loop(self) -> None:
        """Hand `$upstream` messages to the sink in order; hold them while it is not ready; until the stop marker."""
        held = self._held_upstream
        while True:
            item: _Upstream | None
            try:
                item = self._upstream_queue.get(timeout=SWEEP_INTERVAL_S)
                if item is None:
                    return
            except queue.Empty:
                item = None  # idle: look at what is held
            ready = self._upstream_ready()
            if item is not None:
                if expired(item.received_s, item.ttl_s, now_s()):
                    self._count_expired("$upstream", 1)
                    if item.on_durable is not None:
                        item.on_durable()
                elif ready and not len(held):
                    self._send_upstream(item.message, item.on_durable)
                else:
                    topic = format_hub_topic(item.message)
                    waiting = HeldMessage(topic, item.message.body, item.received_s, item.priority, item.ttl_s)
                    held.hold(waiting, item.on_durable)
                    with self._lock:
                        self._stats["held_total"] += 1
            self._count_expired("$upstream", held.drop_expired(now_s()))
            if ready and len(held):
                self._send_held_upstream()

    def _send_held_upstream(self) -> None:
        """Hand the held `$upstream` messages to the sink, highest priority and oldest first."""
        held, sent = self._held_upstream, 0
        while self._upstream_ready() and (message := held.pop()) is not None:
            if message.expired(now_s()):
                message.done()
                self._count_expired("$upstream", 1)
                continue
            self._send_upstream(parse_hub_message(message.topic, message.body), message.done)
            sent += 1
        with self._lock:
            self._stats["held_delivered"] += sent
        if sent:
            logger.info("Handed %d held message(s) to the upstream, which takes messages again", sent)

    def _send_upstream(self, message: Message, on_durable: Callback | None) -> None:
        """Hand one message to the upstream; a failure is logged, the journal keeps the message."""
        try:
            self._upstream(message, on_durable)
        except Exception:  # the sink's problem must not stop routing
            # The journal keeps the message (its reference is not dropped): it is routed again at the next start.
            logger.exception("Upstream sink failed on a message from %s", message.connection_module_id)
            with self._lock:
                self._stats["upstream_errors"] += 1
