"""Direct methods as edgeHub serves them: pending calls, their answers, and the errors callers see.

The router publishes a call on the target module's broker (`$iothub/methods/POST/{name}/?$rid=`)
and `PendingCalls` waits for the module's `$iothub/methods/res/{status}/?$rid=` on that same
broker. `MethodInvoker` adds what edgeHub checks first (`InvokeMethodHandler`): an unknown
module or one not connected within the call's connect timeout is answered 404 ("Client
<device>/<module> not found") without publishing anything, and a call without an answer within
its response timeout 504 ("Timed out waiting for device to respond to method request <id>").
The operator's CLI (`edgehub.control`) and modules (`edgehub.method_endpoint`) both call here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError

__all__ = [
    "DEFAULT_RESPONSE_TIMEOUT_S",
    "MAX_RESPONSE_TIMEOUT_S",
    "ClientNotFoundError",
    "MethodError",
    "MethodInvoker",
    "MethodResult",
    "MethodTimeoutError",
    "PendingCalls",
    "decode_response_payload",
]

# IoT Hub's defaults and bounds for `responseTimeoutInSeconds` (5-300 s, default 30).
DEFAULT_RESPONSE_TIMEOUT_S = 30.0
MAX_RESPONSE_TIMEOUT_S = 300.0
_CONNECT_POLL_S = 0.05


class MethodError(EdgefleetError):
    """Raise when a direct method cannot be called; `status` is the HTTP status edgeHub answers with."""

    status = 400


class ClientNotFoundError(MethodError):
    """Raise when the target module is unknown or not connected (edgeHub: 404)."""

    status = 404


class MethodTimeoutError(MethodError, TimeoutError):
    """Raise when a module does not answer a direct method in time (edgeHub: 504)."""

    status = 504


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A module's answer to a direct method: its status and JSON payload."""

    status: int
    payload: Any

    def document(self) -> dict[str, Any]:
        """Return the answer as edgeHub and `az iot hub invoke-module-method` show it."""
        return {"status": self.status, "payload": self.payload}


@dataclass(slots=True)
class _PendingCall:
    """A direct method call waiting for its response."""

    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    payload: Any = None


def decode_response_payload(payload: bytes) -> Any:
    """Return a method response's payload as JSON, or as text when a module sent something else."""
    if not payload:
        return None
    try:
        return json.loads(payload.decode("utf-8"))
    except ValueError:
        return payload.decode("utf-8", errors="replace")


class PendingCalls:
    """Calls waiting for their module's answer, by (module, request id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _PendingCall] = {}

    def open(self, module: str) -> str:
        """Register a call to `module`; return its request id."""
        rid = uuid.uuid4().hex
        with self._lock:
            self._pending[(module, rid)] = _PendingCall()
        return rid

    def wait(self, module: str, rid: str, timeout_s: float) -> tuple[int, Any] | None:
        """Wait for the answer to a call and forget it; return (status, payload), or None on timeout."""
        with self._lock:
            call = self._pending[(module, rid)]
        try:
            if not call.done.wait(timeout_s):
                return None
            return call.status, call.payload
        finally:
            with self._lock:
                self._pending.pop((module, rid), None)

    def answer(self, module: str, rid: str, status: int, payload: Any) -> bool:
        """Complete a call with its module's answer; return False for an unknown or expired one."""
        with self._lock:
            call = self._pending.get((module, rid))
        if call is None:
            return False
        call.status, call.payload = status, payload
        call.done.set()
        return True

    def fail_all(self, status: int) -> None:
        """Answer every waiting call with `status` (the stand-in is stopping)."""
        with self._lock:
            calls = list(self._pending.values())
        for call in calls:
            call.status = status
            call.done.set()


class MethodInvoker:
    """Call a direct method as edgeHub does: 404 for a module not connected, 504 for no answer in time."""

    def __init__(
        self,
        edge_device: str,
        modules: tuple[str, ...],
        call: Callable[[str, str, Any, float], tuple[int, Any]],
        connected: Callable[[str], bool],
    ) -> None:
        self.edge_device = edge_device
        self.modules = modules
        self._call = call
        self._connected = connected

    def invoke(
        self,
        module: str,
        name: str,
        payload: Any = None,
        *,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        connect_timeout_s: float = 0.0,
    ) -> MethodResult:
        """Call `name` on `module`; return its answer or raise ClientNotFoundError / MethodTimeoutError."""
        if not name:
            raise MethodError("a direct method needs a name")
        if not 0 < response_timeout_s <= MAX_RESPONSE_TIMEOUT_S:
            raise MethodError(f"the response timeout must be more than 0 and at most {MAX_RESPONSE_TIMEOUT_S:g} s")
        if module not in self.modules:
            raise ClientNotFoundError(
                f"Client {self.edge_device}/{module} not found: unknown module {module!r}; "
                f"the stand-in runs {', '.join(self.modules)}"
            )
        deadline = time.monotonic() + max(0.0, connect_timeout_s)
        while not self._connected(module):
            if time.monotonic() >= deadline:
                raise ClientNotFoundError(f"Client {self.edge_device}/{module} not found (it is not connected)")
            time.sleep(_CONNECT_POLL_S)
        status, answer = self._call(module, name, payload, response_timeout_s)
        return MethodResult(status, answer)
