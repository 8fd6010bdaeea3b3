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
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from edgefleet.endpoints import ModuleEndpoints
from edgefleet.errors import StartError

if TYPE_CHECKING:
    # Types only: importing the SDK costs ~0.1 s, paid when the client is created, not on import.
    from azure.iot.device import Message, MethodRequest, MethodResponse
    from azure.iot.device.custom_typing import JSONSerializable, Twin, TwinPatch

logger = logging.getLogger(__name__)

__all__ = ["EdgeLink", "MethodHandler", "ModuleClient", "create_module_client"]

CONNECT_RETRY_FIRST_S = 1.0
CONNECT_RETRY_MAX_S = 30.0

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

    from edgefleet.mqtt_tuning import enable_tcp_nodelay

    enable_tcp_nodelay()  # also covers the sensor's field client, created later in this process
    try:
        # Keep retrying the connection forever: edgeHub restarts are routine on a device.
        return IoTHubModuleClient.create_from_edge_environment(connection_retry=True, keep_alive=30)
    except Exception as err:  # the SDK raises OSError/ValueError/... depending on what is missing
        raise StartError(
            f"cannot create the module client ({err}). Run the module under IoT Edge, or for local runs set "
            "EdgeHubConnectionString and EdgeModuleCACertificateFile (`edgefleet edgehub` writes them to "
            "<state>/modules/<module>.env)"
        ) from err


class EdgeLink:
    """The module's edgeHub connection: outputs, inputs, twin and direct methods."""

    def __init__(self, client: ModuleClient, endpoints: ModuleEndpoints) -> None:
        self.client = client
        self.endpoints = endpoints
        self._methods: dict[str, MethodHandler] = {}

    def on_input(self, handler: Callable[[str, bytes, Mapping[str, str]], None]) -> None:
        """Call `handler(input_name, body, properties)` for every message on a declared input."""
        inputs = set(self.endpoints.inputs)

        def _received(message: Message) -> None:
            name = message.input_name
            data = message.data
            body = data if isinstance(data, bytes) else str(data).encode("utf-8")
            if name not in inputs:
                logger.warning("Message on undeclared input %r ignored (declared: %s)", name, ", ".join(inputs))
                return
            handler(name, body, dict(message.custom_properties))

        self.client.on_message_received = _received

    def on_desired_patch(self, handler: Callable[[Mapping[str, Any]], None]) -> None:
        """Call `handler(patch)` for every desired-properties patch."""
        self.client.on_twin_desired_properties_patch_received = handler

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
        """
        delay_s = CONNECT_RETRY_FIRST_S
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            try:
                if register is not None:
                    register()
                self.client.connect()
                return True
            except Exception as err:  # ConnectionFailedError, OperationTimeout, ... all mean "not yet"
                logger.warning("edgeHub not reachable (%s: %s); retrying in %.0f s", type(err).__name__, err, delay_s)
            stop_event.wait(delay_s)
            delay_s = min(CONNECT_RETRY_MAX_S, delay_s * 2)
        return False

    def desired(self) -> dict[str, Any]:
        """Return the twin's desired properties."""
        twin = self.client.get_twin()
        return dict(twin.get("desired", {}))

    def report(self, reported: Mapping[str, Any]) -> None:
        """Patch the twin's reported properties; a failure is logged, never raised."""
        try:
            self.client.patch_twin_reported_properties(dict(reported))
        except Exception as err:
            logger.warning("Could not report twin properties: %s", err)

    def send(self, output: str, body: bytes, properties: Mapping[str, str] | None = None) -> None:
        """Send one JSON message to a declared output (blocks until edgeHub acknowledges it)."""
        from azure.iot.device import Message

        message = Message(body, content_encoding="utf-8", content_type="application/json")
        for key, value in (properties or {}).items():
            message.custom_properties[key] = value
        self.client.send_message_to_output(message, self.endpoints.output(output))

    def shutdown(self) -> None:
        """Disconnect and stop the SDK's threads."""
        try:
            self.client.shutdown()
        except Exception as err:
            logger.warning("Client shutdown failed: %s", err)
