"""A tiny IoT Edge module for the stand-in tests, driven by JSON commands on stdin.

It uses the real azure-iot-device SDK exactly as a deployed module does
(`IoTHubModuleClient.create_from_edge_environment()`), records what it receives (inputs,
desired patches, method calls) and answers queries about it. One JSON object per line in
both directions; every reply carries the `id` of its command.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.iot.device import IoTHubModuleClient, Message, MethodRequest, MethodResponse

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout."""
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class ModuleApp:
    """Record everything the module receives and run the test's commands."""

    def __init__(self, name: str, sastoken_ttl: int | None = None) -> None:
        self.name = name
        # A short token lifetime makes the SDK renew its token (and reconnect) within a test.
        ttl = {"sastoken_ttl": sastoken_ttl} if sastoken_ttl is not None else {}
        self.client = IoTHubModuleClient.create_from_edge_environment(**ttl)
        self.lock = threading.Lock()
        self.inputs: dict[str, list[dict[str, Any]]] = {}
        self.patches: list[dict[str, Any]] = []
        self.methods: list[dict[str, Any]] = []
        self.client.on_message_received = self.on_message
        self.client.on_twin_desired_properties_patch_received = self.on_patch
        self.client.on_method_request_received = self.on_method
        self.client.connect()

    def on_message(self, message: Message) -> None:
        """Record one input message with its properties and content type."""
        data = message.data
        record = {
            "input": message.input_name,
            "props": dict(message.custom_properties),
            "ct": message.content_type,
            "ce": message.content_encoding,
            "cid": message.correlation_id,
            "mid": message.message_id,
            "uid": message.user_id,
            "body": data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data),
        }
        with self.lock:
            self.inputs.setdefault(message.input_name, []).append(record)

    def on_patch(self, patch: dict[str, Any]) -> None:
        """Record a desired-properties patch."""
        with self.lock:
            self.patches.append(patch)

    def on_method(self, request: MethodRequest) -> None:
        """Answer every direct method with an echo of its request (except `ignore`, never answered)."""
        with self.lock:
            self.methods.append({"name": request.name, "payload": request.payload})
        if request.name == "ignore":
            return
        status = 200 if request.name != "fail" else 500
        answer = {"echo": request.payload, "method": request.name, "module": self.name}
        self.client.send_method_response(MethodResponse.create_from_method_request(request, status, answer))

    def send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send `count` messages to an output, `workers` at a time."""
        count = int(cmd.get("count", 1))

        def one(index: int) -> None:
            body = cmd.get("body", {"i": index})
            message = Message(json.dumps(body) if not isinstance(body, str) else body)
            if cmd.get("content_type"):
                message.content_type = cmd["content_type"]
            if cmd.get("content_encoding"):
                message.content_encoding = cmd["content_encoding"]
            if cmd.get("correlation_id"):
                message.correlation_id = cmd["correlation_id"]
            if cmd.get("message_id"):
                message.message_id = f"{cmd['message_id']}-{index}"
            for key, value in cmd.get("props", {}).items():
                message.custom_properties[key] = value
            self.client.send_message_to_output(message, cmd["output"])

        workers = int(cmd.get("workers", 1))
        if workers <= 1:
            for index in range(count):
                one(index)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, range(count)))
        return {"sent": count}

    def query_inputs(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Return what arrived on one input: all records, or only counts."""
        with self.lock:
            records = list(self.inputs.get(cmd["input"], []))
        reply: dict[str, Any] = {"count": len(records), "distinct": len({r["body"] for r in records})}
        if not cmd.get("count_only"):
            reply["records"] = records
        return reply

    def run(self) -> None:
        """Answer commands until `exit` or end of input."""
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "send": self.send,
            "inputs": self.query_inputs,
            "get_twin": lambda cmd: {"twin": self.client.get_twin()},
            "patch_reported": lambda cmd: self.client.patch_twin_reported_properties(cmd["patch"]) or {},
            "patches": lambda cmd: {"patches": list(self.patches)},
            "methods": lambda cmd: {"methods": list(self.methods)},
            "invoke": lambda cmd: {"result": self.client.invoke_method(cmd["params"], cmd["device"], cmd["module"])},
        }
        emit({"id": 0, "ready": True})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                break
            try:
                reply = handlers[cmd["op"]](cmd)
            except Exception as err:  # report to the test instead of dying silently
                reply = {"error": f"{type(err).__name__}: {err}"}
            emit({"id": cmd["id"], **reply})
        self.client.shutdown()


if __name__ == "__main__":
    ModuleApp(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None).run()
