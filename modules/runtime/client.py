"""The module's link to edgeHub: the SDK calls we make (`ModuleClient`), creating the client, and `EdgeLink`.

Services talk to edgeHub through `EdgeLink`, which wraps the azure-iot-device client created
with `IoTHubModuleClient.create_from_edge_environment()`: the same call on a real IoT Edge
device (`IOTEDGE_*` variables) and against the offline stand-in (`EdgeHubConnectionString` +
`EdgeModuleCACertificateFile`). Tests hand `EdgeLink` an in-memory `ModuleClient` instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

from edgefleet.endpoints import ModuleEndpoints
from edgefleet.errors import StartError
from edgefleet.messages import CONTENT_ENCODING, CONTENT_TYPE
from modules.runtime.input_topic import parse_input_topic
from modules.runtime.outbox import CLOSE_TIMEOUT_S

if TYPE_CHECKING:
    # Types only: importing the SDK costs ~0.1 s, paid when the client is created, not on import.
    from azure.iot.device import Message, MethodRequest, MethodResponse
    from azure.iot.device.custom_typing import JSONSerializable, Twin, TwinPatch

logger = logging.getLogger(__name__)

__all__ = ["STOP_RESERVE_S", "EdgeLink", "MethodHandler", "ModuleClient", "create_module_client"]

CONNECT_RETRY_FIRST_S = 1.0
CONNECT_RETRY_MAX_S = 30.0
# The SDK's own reconnect interval (whole seconds): its default of 10 s leaves a module deaf that long.
SDK_RECONNECT_INTERVAL_S = 2
# How long the SDK waits for a CONNACK before it drops the attempt and retries (its own default:
# 60 s). edgeHub runs on the same host; after an edgeHub broker is killed mid-reconnect the SDK
# has been seen waiting out the full minute on a connection that never got its CONNECT sent.
SDK_CONNECT_WATCHDOG_S = 15
# Bounds on SDK calls that wait for edgeHub forever when it is gone or lost our subscriptions:
# a module must keep reporting health and obey SIGTERM whatever edgeHub does.
SUBSCRIBE_TIMEOUT_S = 10.0
TWIN_TIMEOUT_S = 10.0
REPORT_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 5.0
RESYNC_RETRY_S = 1.0
# What stopping needs after the drain (a last report, the outbox's threads, the SDK's shutdown):
# a module keeps this much of its drain timeout back, so SIGTERM ends it within that timeout.
STOP_RESERVE_S = REPORT_TIMEOUT_S + SHUTDOWN_TIMEOUT_S + CLOSE_TIMEOUT_S + 1.0

_T = TypeVar("_T")

# A direct method's payload in; (status, JSON-able payload) out.
MethodHandler: TypeAlias = "Callable[[JSONSerializable], tuple[int, JSONSerializable]]"


class ModuleClient(Protocol):
    """The calls a module makes on azure-iot-device's `IoTHubModuleClient` (sync API), and nothing more.

    The three handlers are write-only here: a module sets them and never reads them back, so
    their getters promise nothing (the SDK's return handlers that may also be coroutines).
    """

    def connect(self) -> None: ...

    def shutdown(self) -> None: ...

    def send_message_to_output(self, message: Message, output_name: str) -> None: ...

    def get_twin(self) -> Twin: ...

    def patch_twin_reported_properties(self, reported_properties_patch: TwinPatch) -> None: ...

    def send_method_response(self, method_response: MethodResponse) -> None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def on_connection_state_change(self) -> object: ...

    # The SDK calls it with no arguments, though its annotation names one.
    @on_connection_state_change.setter
    def on_connection_state_change(self, value: Callable[..., None]) -> None: ...

    @property
    def on_message_received(self) -> object: ...

    @on_message_received.setter
    def on_message_received(self, value: Callable[[Message], None]) -> None: ...

    @property
    def on_twin_desired_properties_patch_received(self) -> object: ...

    @on_twin_desired_properties_patch_received.setter
    def on_twin_desired_properties_patch_received(self, value: Callable[[TwinPatch], None]) -> None: ...

    @property
    def on_method_request_received(self) -> object: ...

    @on_method_request_received.setter
    def on_method_request_received(self, value: Callable[[MethodRequest], None]) -> None: ...


def create_module_client() -> ModuleClient:
    """Create the azure-iot-device module client from the IoT Edge (or dev) environment."""
    from azure.iot.device import IoTHubModuleClient
    from azure.iot.device.common.pipeline import pipeline_stages_mqtt

    from edgefleet.mqtt_tuning import enable_tcp_nodelay

    enable_tcp_nodelay()  # also covers the sensor's field client, created later in this process
    # A module constant the SDK reads each time it arms the watchdog of a connection attempt.
    pipeline_stages_mqtt.WATCHDOG_INTERVAL = SDK_CONNECT_WATCHDOG_S
    try:
        # Keep retrying the connection forever: edgeHub restarts are routine on a device.
        return IoTHubModuleClient.create_from_edge_environment(
            connection_retry=True, connection_retry_interval=SDK_RECONNECT_INTERVAL_S, keep_alive=30
        )
    except Exception as err:  # the SDK raises OSError/ValueError/... depending on what is missing
        raise StartError(
            f"cannot create the module client ({err}). Run the module under IoT Edge, or for local runs set "
            "EdgeHubConnectionString and EdgeModuleCACertificateFile (`edgefleet edgehub` writes them to "
            "<state>/modules/<module>.env)"
        ) from err


class _FeaturePipeline(Protocol):
    """The SDK's MQTT pipeline, as far as re-subscribing needs it (a private part of the SDK client)."""

    feature_enabled: dict[str, bool]

    def enable_feature(self, feature_name: str, callback: Callable[..., None]) -> None: ...


class _MqttTransport(Protocol):
    """The SDK's MQTT transport, as far as taking input messages before their PUBACK needs it (private)."""

    on_mqtt_message_received_handler: Callable[[str, bytes], None]


class _PipelineStage(Protocol):
    next: _PipelineStage | None


def _mqtt_transport(client: object) -> _MqttTransport | None:
    """Return the SDK client's MQTT transport (the last stage of its MQTT pipeline); None for other clients."""
    pipeline = getattr(client, "_mqtt_pipeline", None)
    stage: _PipelineStage | None = getattr(pipeline, "_pipeline", None)
    while stage is not None:
        transport = getattr(stage, "transport", None)
        if transport is not None and hasattr(transport, "on_mqtt_message_received_handler"):
            return cast("_MqttTransport", transport)
        stage = getattr(stage, "next", None)
    return None


def _call_within(timeout_s: float, what: str, call: Callable[[], _T]) -> _T:
    """Return `call()`, run on a helper thread; raise TimeoutError when it takes longer than `timeout_s`.

    The SDK's twin and shutdown calls wait without limit for a connection (and a twin request
    waits forever for a response on a topic the broker may have forgotten we subscribed to);
    a call that times out is left to finish, or not, on its daemon thread.
    """
    done = threading.Event()
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name=f"edgehub-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what} took longer than {timeout_s:.0f} s")
    if failure:
        raise failure[0]
    return outcome[0]


class EdgeLink:
    """The module's edgeHub connection: outputs, inputs, twin and direct methods.

    After every reconnect the link subscribes again and re-reads the twin: the SDK subscribes
    once and counts on the broker keeping its session, which a broker restart or another client
    connecting with our id and a clean session wipes, leaving the module connected but deaf.
    """

    def __init__(self, client: ModuleClient, endpoints: ModuleEndpoints) -> None:
        self.client = client
        self.endpoints = endpoints
        self._methods: dict[str, MethodHandler] = {}
        self._register: Callable[[], None] | None = None
        self._desired_handler: Callable[[Mapping[str, Any]], None] | None = None
        self._full_desired_handler: Callable[[Mapping[str, Any]], None] | None = None
        # Serializes full-twin reads with patches, so a patch is never overtaken by an older twin.
        self._desired_lock = threading.Lock()
        self._desired_version: int | None = None
        self._subscribed = threading.Event()
        self._resync_wanted = threading.Event()
        self._closing = threading.Event()
        self._early_transport: _MqttTransport | None = None
        self._deliver_early: Callable[[str, bytes, Mapping[str, str]], None] = lambda name, body, properties: None

    def on_input(self, handler: Callable[[str, bytes, Mapping[str, str]], None]) -> None:
        """Call `handler(input_name, body, properties)` for every message on a declared input.

        With the SDK's client the handler runs on its MQTT thread, before that thread acknowledges
        the message (paho 1.x sends the PUBACK when its message callback returns): a message is
        acknowledged only once the handler has kept it (the inference module journals it). The
        SDK's own path hands the message to its handler thread first and acknowledges at once, so
        a kill -9 lost what waited there. The SDK still subscribes to the inputs; a message that
        takes its path anyway (another client) reaches the same handler.
        """
        inputs = set(self.endpoints.inputs)

        def _deliver(name: str, body: bytes, properties: Mapping[str, str]) -> None:
            if name not in inputs:
                logger.warning("Message on undeclared input %r ignored (declared: %s)", name, ", ".join(inputs))
                return
            handler(name, body, properties)

        def _received(message: Message) -> None:
            data = message.data
            body = data if isinstance(data, bytes) else str(data).encode("utf-8")
            _deliver(message.input_name, body, dict(message.custom_properties))

        self.client.on_message_received = _received
        self._take_inputs_before_ack(_deliver)

    def _take_inputs_before_ack(self, deliver: Callable[[str, bytes, Mapping[str, str]], None]) -> None:
        """Deliver input messages on the SDK's MQTT thread, before it acknowledges them."""
        transport = _mqtt_transport(self.client)
        if transport is None:  # not the SDK's client (tests): its handler thread is the only path
            return
        self._deliver_early = deliver  # a later registration (reconnect) replaces the handler, never re-wraps
        if self._early_transport is transport:
            return
        sdk_received = transport.on_mqtt_message_received_handler

        def _received_on_mqtt_thread(topic: str, payload: bytes) -> None:
            parsed = parse_input_topic(topic)
            if parsed is None:  # twin responses, desired patches, methods: the SDK's own path
                sdk_received(topic, payload)
                return
            try:
                self._deliver_early(parsed.input_name, bytes(payload), parsed.properties)
            except Exception:  # the SDK would log and acknowledge anyway; say which message it was
                logger.exception("Handling a message on input %r failed", parsed.input_name)

        transport.on_mqtt_message_received_handler = _received_on_mqtt_thread
        self._early_transport = transport

    def on_desired(self, full: Callable[[Mapping[str, Any]], None], patch: Callable[[Mapping[str, Any]], None]) -> None:
        """Call `full(desired)` with the whole desired set (`apply_twin`: at start and after every
        reconnect) and `patch(changes)` with every later patch.

        The two differ: a property missing from the whole set is back to its default, while a patch
        changes only the properties it names.
        """
        self._full_desired_handler = full
        self._desired_handler = patch
        self.client.on_twin_desired_properties_patch_received = self._patch_received

    def _patch_received(self, patch: Mapping[str, Any]) -> None:
        with self._desired_lock:
            version = patch.get("$version")
            if isinstance(version, int) and self._desired_version is not None and version <= self._desired_version:
                logger.debug("Desired patch $version=%d is already in the twin read last; skipped", version)
                return
            if isinstance(version, int):
                self._desired_version = version
            if self._desired_handler is not None:
                self._desired_handler(patch)

    def on_method(self, name: str, handler: MethodHandler) -> None:
        """Answer direct method `name` with `handler(payload) -> (status, payload)`."""
        self._methods[name] = handler
        self.client.on_method_request_received = self._answer_method

    def _answer_method(self, request: MethodRequest) -> None:
        from azure.iot.device import MethodResponse

        handler = self._methods.get(request.name)
        payload: JSONSerializable
        if handler is None:
            known = ", ".join(sorted(self._methods))
            status, payload = 404, {"error": f"unknown method {request.name!r}; try {known}"}
        else:
            try:
                status, payload = handler(request.payload)
            except Exception as err:  # a method must answer, whatever happens
                logger.exception("Direct method %s failed", request.name)
                status, payload = 500, {"error": f"{type(err).__name__}: {err}"}
        self.client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

    def connect(self, stop_event: threading.Event | None = None, register: Callable[[], None] | None = None) -> bool:
        """Register the handlers and connect to edgeHub, retrying with backoff; False if stopped first.

        On a device the runtime starts modules and edgeHub side by side, so edgeHub may not listen
        yet; the SDK's `connection_retry` only covers reconnecting after a dropped connection, and
        registering a handler with no connection raises. Handlers go in before the connection is
        up (`register` is retried with it): queued input messages arrive right after connecting.
        Once connected, every later reconnect re-subscribes and re-applies the twin (`healthy`
        is False until that is done).
        """
        delay_s = CONNECT_RETRY_FIRST_S
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            try:
                if register is not None:
                    register()
                self.client.connect()
            except Exception as err:  # ConnectionFailedError, OperationTimeout, ... all mean "not yet"
                logger.warning("edgeHub not reachable (%s: %s); retrying in %.0f s", type(err).__name__, err, delay_s)
            else:
                self._watch_connection(register)
                return True
            stop_event.wait(delay_s)
            delay_s = min(CONNECT_RETRY_MAX_S, delay_s * 2)
        return False

    def _watch_connection(self, register: Callable[[], None] | None) -> None:
        self._register = register
        self._subscribed.set()
        threading.Thread(target=self._resync_loop, name="edgehub-resync", daemon=True).start()
        self.client.on_connection_state_change = self._connection_changed

    def healthy(self) -> bool:
        """Return whether the link is connected and subscribed: able to receive as well as send."""
        return self._subscribed.is_set() and bool(self.client.connected)

    def _connection_changed(self) -> None:
        """Note a connect or disconnect (the SDK's event thread): the resync thread takes it from here."""
        self._subscribed.clear()
        if self.client.connected:
            logger.info("Reconnected to edgeHub; subscribing again and re-reading the twin")
        else:
            logger.warning("Lost the edgeHub connection; the SDK reconnects")
        self._resync_wanted.set()

    def _resync_loop(self) -> None:
        while True:
            self._resync_wanted.wait()
            self._resync_wanted.clear()
            if self._closing.is_set():
                return
            if not self.client.connected:
                continue  # the connect event wakes us again
            try:
                self._resubscribe()
                self.apply_twin()
            except Exception as err:  # a timeout or a dropped connection: try again, health stays down
                logger.warning("Re-subscribing to edgeHub failed (%s: %s); retrying", type(err).__name__, err)
                self._closing.wait(RESYNC_RETRY_S)
                self._resync_wanted.set()
                continue
            if self.client.connected and not self._resync_wanted.is_set():
                self._subscribed.set()
                logger.info("edgeHub subscriptions and twin restored")

    def _resubscribe(self) -> None:
        """Subscribe again to every feature the SDK has enabled (inputs, twin, patches, methods)."""
        # The SDK's handler setters only subscribe while its feature flag is off, and a reconnect
        # leaves the flags on; asking its pipeline to enable each feature again re-sends the
        # SUBSCRIBE (the broker treats a repeated subscription as a no-op).
        pipeline: _FeaturePipeline | None = getattr(self.client, "_mqtt_pipeline", None)
        if pipeline is None:  # not the SDK's client (tests): registering the handlers again is all there is
            if self._register is not None:
                self._register()
            return
        for feature, enabled in list(pipeline.feature_enabled.items()):
            if enabled:
                self._enable(pipeline, feature)

    @staticmethod
    def _enable(pipeline: _FeaturePipeline, feature: str) -> None:
        done = threading.Event()
        errors: list[BaseException | None] = []

        def completed(error: BaseException | None = None, **_: object) -> None:
            errors.append(error)
            done.set()

        pipeline.enable_feature(feature, callback=completed)
        if not done.wait(SUBSCRIBE_TIMEOUT_S):
            raise TimeoutError(f"subscribing to {feature} took longer than {SUBSCRIBE_TIMEOUT_S:.0f} s")
        if errors[0] is not None:
            raise errors[0]

    def desired(self) -> dict[str, Any]:
        """Return the twin's desired properties (with their `$version`)."""
        twin = _call_within(TWIN_TIMEOUT_S, "get_twin", self.client.get_twin)
        return dict(twin.get("desired", {}))

    def apply_twin(self) -> None:
        """Read the full twin and hand its whole desired set to the full-desired handler (which reports)."""
        with self._desired_lock:
            desired = self.desired()
            version = desired.get("$version")
            if isinstance(version, int):
                self._desired_version = version
            if self._full_desired_handler is not None:
                self._full_desired_handler(desired)

    def report(self, reported: Mapping[str, Any]) -> None:
        """Patch the twin's reported properties; a failure is logged, never raised; skipped while disconnected."""
        if not self.client.connected:
            logger.debug("Not reporting twin properties: edgeHub is not connected")
            return
        try:
            _call_within(REPORT_TIMEOUT_S, "report", lambda: self.client.patch_twin_reported_properties(dict(reported)))
        except Exception as err:
            logger.warning("Could not report twin properties: %s", err)

    def send(
        self,
        output: str,
        body: bytes,
        properties: Mapping[str, str] | None = None,
        content_encoding: str = CONTENT_ENCODING,
    ) -> None:
        """Send one JSON message (plain UTF-8, or compressed as `content_encoding` says) to a declared output.

        Blocks until edgeHub acknowledges it.
        """
        from azure.iot.device import Message

        message = Message(body, content_encoding=content_encoding, content_type=CONTENT_TYPE)
        for key, value in (properties or {}).items():
            message.custom_properties[key] = value
        self.client.send_message_to_output(message, self.endpoints.output(output))

    def shutdown(self) -> None:
        """Disconnect and stop the SDK's threads (given up after SHUTDOWN_TIMEOUT_S when edgeHub is gone)."""
        self._closing.set()
        self._subscribed.clear()
        self._resync_wanted.set()
        try:
            _call_within(SHUTDOWN_TIMEOUT_S, "shutdown", self.client.shutdown)
        except Exception as err:
            logger.warning("Client shutdown failed: %s", err)
