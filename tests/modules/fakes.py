"""An in-memory edgeHub for module tests: a `ModuleClient` that records what a module sends.

Tests deliver input messages, desired-property patches and direct-method calls the way the
SDK does (on the caller's thread, through the handlers the module registered) and read back
the outputs, reported properties and method responses.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.iot.device import Message, MethodRequest, MethodResponse

from edgefleet.envelope import open_body

__all__ = ["FakeModuleClient", "SentMessage"]


@dataclass(frozen=True)
class SentMessage:
    """One message a module sent to one of its outputs."""

    output: str
    body: bytes  # as sent: compressed when `content_encoding` says so
    properties: Mapping[str, str]
    content_encoding: str = "utf-8"
    content_type: str = "application/json"

    def opened(self) -> bytes:
        """Return the body as its JSON bytes (opened as every upstream reader opens it)."""
        return open_body(self.body, {"contentEncoding": self.content_encoding})

    def json(self) -> Any:
        """Return the body, opened, parsed as JSON."""
        return json.loads(self.opened())


class FakeModuleClient:
    """Stand in for `IoTHubModuleClient`: no network, everything kept in memory (thread-safe)."""

    def __init__(self, desired: Mapping[str, Any] | None = None) -> None:
        self.on_message_received: Callable[[Message], None] | None = None
        self.on_twin_desired_properties_patch_received: Callable[[dict[str, Any]], None] | None = None
        self.on_method_request_received: Callable[[MethodRequest], None] | None = None
        self.desired: dict[str, Any] = dict(desired or {})
        self.reported: dict[str, Any] = {}
        self.connected = False
        self.method_responses: list[MethodResponse] = []
        self._sent: list[SentMessage] = []
        self._changed = threading.Condition()
        self._at_shutdown: list[Message] = []
        self._request_ids = itertools.count(1)

    # -- the SDK calls a module makes ------------------------------------------------------------

    def connect(self) -> None:
        self.connected = True

    def shutdown(self) -> None:
        self.connected = False
        # The SDK may hand over messages it acknowledged just before it disconnected.
        for message in self._at_shutdown:
            self._receive(message)
        self._at_shutdown.clear()

    def send_message_to_output(self, message: Message, output_name: str) -> None:
        body = message.data if isinstance(message.data, bytes) else str(message.data).encode()
        with self._changed:
            self._sent.append(
                SentMessage(
                    output_name,
                    body,
                    dict(message.custom_properties),
                    message.content_encoding,
                    message.content_type,
                )
            )
            self._changed.notify_all()

    def get_twin(self) -> dict[str, Any]:
        return {"desired": dict(self.desired), "reported": dict(self.reported)}

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any]) -> None:
        self.reported.update(reported_properties_patch)

    def send_method_response(self, method_response: MethodResponse) -> None:
        self.method_responses.append(method_response)

    # -- what a test does as edgeHub -------------------------------------------------------------

    def deliver(
        self, input_name: str, body: bytes | Mapping[str, Any], properties: Mapping[str, str] | None = None
    ) -> None:
        """Hand one message to the module's input handler, as edgeHub routes it (a mapping is sent as JSON)."""
        self._receive(_message(input_name, body, properties))

    def hand_over_at_shutdown(self, input_name: str, body: bytes | Mapping[str, Any]) -> None:
        """Deliver a message only while the module shuts the client down (it arrived just before)."""
        self._at_shutdown.append(_message(input_name, body, None))

    def patch_desired(self, patch: Mapping[str, Any]) -> None:
        """Change desired properties and hand the patch to the module, as IoT Hub does."""
        self.desired.update(patch)
        assert self.on_twin_desired_properties_patch_received is not None, "the module registered no patch handler"
        self.on_twin_desired_properties_patch_received(dict(patch))

    def call_method(self, name: str, payload: Any = None) -> MethodResponse:
        """Invoke a direct method and return the module's response."""
        assert self.on_method_request_received is not None, "the module registered no method handler"
        request = MethodRequest(str(next(self._request_ids)), name, payload)
        self.on_method_request_received(request)
        return next(r for r in reversed(self.method_responses) if r.request_id == request.request_id)

    def sent(self, output: str | None = None) -> list[SentMessage]:
        """Return the messages sent so far (to `output`, or to any output)."""
        with self._changed:
            return [m for m in self._sent if output is None or m.output == output]

    def wait_sent(self, output: str, count: int, timeout_s: float = 10.0) -> list[SentMessage]:
        """Wait until at least `count` messages went to `output`; return them all."""
        return self.wait_until(output, lambda sent: len(sent) >= count, timeout_s)

    def wait_until(
        self, output: str, done: Callable[[list[SentMessage]], bool], timeout_s: float = 10.0
    ) -> list[SentMessage]:
        """Wait until the messages sent to `output` satisfy `done`; return them (fail the test on timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = [m for m in self._sent if m.output == output]
                if done(found):
                    return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(found)} message(s) on {output!r} after {timeout_s} s: not what was awaited"
                self._changed.wait(remaining)

    def _receive(self, message: Message) -> None:
        assert self.on_message_received is not None, "the module registered no input handler"
        self.on_message_received(message)


def _message(input_name: str, body: bytes | Mapping[str, Any], properties: Mapping[str, str] | None) -> Message:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    message = Message(data, content_encoding="utf-8", content_type="application/json")
    message.input_name = input_name
    message.custom_properties.update(properties or {})
    return message
