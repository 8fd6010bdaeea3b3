"""What every edge module shares: settings base, the SDK link to edgeHub, an outbox, latency stats.

A module's `__main__` only wires: `load_settings(...)` → `create_module_client()` →
`Service(settings, client).run(stop_event)`, with SIGTERM setting the stop event (the process
helpers every process shares live in `edgefleet.process`). Services talk to edgeHub through `EdgeLink`, which wraps the
azure-iot-device client created with `IoTHubModuleClient.create_from_edge_environment()`: the
same call on a real IoT Edge device (`IOTEDGE_*` variables) and against the offline stand-in
(`EdgeHubConnectionString` + `EdgeModuleCACertificateFile`).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.endpoints import ModuleEndpoints
from edgefleet.errors import StartError
from edgefleet.messages import units_4kb

logger = logging.getLogger(__name__)

__all__ = [
    "EdgeLink",
    "LatencyWindow",
    "ModuleSettings",
    "Outbox",
    "apply_desired_patch",
    "create_module_client",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SEND_RETRY_FIRST_S = 0.2
SEND_RETRY_MAX_S = 10.0
CONNECT_RETRY_FIRST_S = 1.0
CONNECT_RETRY_MAX_S = 30.0


class ModuleSettings(BaseSettings):
    """Settings every module has; subclasses add their own with an env prefix."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    log_level: str = Field("INFO", validation_alias=AliasChoices("log_level", "LOG_LEVEL"))
    report_interval_s: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("report_interval_s", "REPORT_INTERVAL_S")
    )
    # On a device the runtime sets IOTEDGE_DEVICEID; the stand-in's connection string names it.
    edge_device: str | None = Field(None, validation_alias=AliasChoices("edge_device", "IOTEDGE_DEVICEID"))
    # Touched after every twin report; the image's HEALTHCHECK reads its age.
    health_file: Path | None = Field(None, validation_alias=AliasChoices("health_file", "HEALTH_FILE"))
    edgehub_connection_string: SecretStr | None = Field(
        None, validation_alias=AliasChoices("edgehub_connection_string", "EdgeHubConnectionString")
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL is {value!r}; set one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _edge_device_from_connection_string(self) -> ModuleSettings:
        if self.edge_device is None and self.edgehub_connection_string is not None:
            parts = dict(
                part.split("=", 1)
                for part in self.edgehub_connection_string.get_secret_value().split(";")
                if "=" in part
            )
            object.__setattr__(self, "edge_device", parts.get("DeviceId"))
        return self

    @property
    def edge_device_id(self) -> str:
        """Return the IoT Edge device this module runs on ('local' when nothing names it)."""
        return self.edge_device or "local"


DesiredT = TypeVar("DesiredT", bound=BaseModel)


def apply_desired_patch(current: DesiredT, patch: Mapping[str, Any]) -> DesiredT:
    """Return `current` with a twin desired patch applied; raise ValueError naming each bad property."""
    changes = {key: value for key, value in patch.items() if not key.startswith("$")}  # $version, $metadata
    try:
        return type(current).model_validate({**current.model_dump(by_alias=True), **changes})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in err.errors())
        raise ValueError(f"desired properties rejected ({problems}); keeping the previous values") from None


def create_module_client() -> Any:
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


MethodHandler = Callable[[Any], tuple[int, Any]]  # payload in; (status, JSON-able payload) out


class EdgeLink:
    """The module's edgeHub connection: outputs, inputs, twin and direct methods."""

    def __init__(self, client: Any, endpoints: ModuleEndpoints) -> None:
        self.client = client
        self.endpoints = endpoints
        self._methods: dict[str, MethodHandler] = {}

    def on_input(self, handler: Callable[[str, bytes, Mapping[str, str]], None]) -> None:
        """Call `handler(input_name, body, properties)` for every message on a declared input."""
        inputs = set(self.endpoints.inputs)

        def _received(message: Any) -> None:
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

    def _answer_method(self, request: Any) -> None:
        from azure.iot.device import MethodResponse

        handler = self._methods.get(request.name)
        payload: Any
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


@dataclass(frozen=True, slots=True)
class _Outgoing:
    output: str
    body: bytes
    properties: Mapping[str, str] | None


class Outbox:
    """Send messages on background threads, retrying until edgeHub takes them.

    `put` blocks when `max_pending` messages wait: back-pressure reaches whoever produces
    (the field MQTT client, the SDK's input handler) instead of memory growing without bound.
    """

    def __init__(
        self, send: Callable[[str, bytes, Mapping[str, str] | None], None], threads: int = 2, max_pending: int = 2000
    ) -> None:
        self._send = send
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._closing = threading.Event()
        self.sent: dict[str, int] = {}
        self.bytes_sent: dict[str, int] = {}
        self.units_sent: dict[str, int] = {}
        self.retries = 0
        self._threads = [threading.Thread(target=self._loop, name=f"outbox-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def put(self, output: str, body: bytes, properties: Mapping[str, str] | None = None) -> None:
        """Queue one message for an output."""
        with self._lock:
            self._busy += 1
        self._queue.put(_Outgoing(output, body, properties))

    def pending(self) -> int:
        """Return messages queued or being sent."""
        with self._lock:
            return self._busy

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            delay_s = SEND_RETRY_FIRST_S
            while True:
                try:
                    self._send(item.output, item.body, item.properties)
                    break
                except Exception as err:  # the SDK raises its own types; keep the message and retry
                    with self._lock:
                        self.retries += 1
                    logger.warning("Send to %s failed (%s); retrying in %.1f s", item.output, err, delay_s)
                    time.sleep(delay_s * (0.5 + random.random() / 2))
                    delay_s = min(SEND_RETRY_MAX_S, delay_s * 2)
            with self._lock:
                self.sent[item.output] = self.sent.get(item.output, 0) + 1
                self.bytes_sent[item.output] = self.bytes_sent.get(item.output, 0) + len(item.body)
                self.units_sent[item.output] = self.units_sent.get(item.output, 0) + units_4kb(len(item.body))
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued message is sent; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stats(self) -> dict[str, Any]:
        """Return per-output message, byte and 4 KB-unit counts."""
        with self._lock:
            return {
                "sent": dict(self.sent),
                "bytes": dict(self.bytes_sent),
                "units_4kb": dict(self.units_sent),
                "retries": self.retries,
                "pending": self._busy,
            }

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.sent, self.bytes_sent, self.units_sent, self.retries = {}, {}, {}, 0

    def close(self) -> None:
        """Stop the sender threads (call `drain` first to send what is queued)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(5)


class LatencyWindow:
    """Keep the last `capacity` latencies (ms) for p50/p99."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._values = np.zeros(capacity)
        self._count = 0
        self._lock = threading.Lock()

    def add_many(self, values_ms: Sequence[float] | np.ndarray) -> None:
        """Record latencies."""
        values_ms = np.asarray(values_ms, dtype=float).reshape(-1)[-len(self._values) :]
        with self._lock:
            start = self._count % len(self._values)
            end = start + len(values_ms)
            if end <= len(self._values):
                self._values[start:end] = values_ms
            else:
                split = len(self._values) - start
                self._values[start:] = values_ms[:split]
                self._values[: end - len(self._values)] = values_ms[split:]
            self._count += len(values_ms)

    def percentiles(self) -> dict[str, float | None]:
        """Return p50 and p99 in ms over the window (None before the first value)."""
        with self._lock:
            filled = self._values[: min(self._count, len(self._values))].copy()
        if not len(filled):
            return {"p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(filled, [50, 99])
        return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}

    def reset(self) -> None:
        """Forget every value."""
        with self._lock:
            self._count = 0
