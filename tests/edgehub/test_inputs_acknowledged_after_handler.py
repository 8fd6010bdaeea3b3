"""edgeHub gets a module's acknowledgement of an input message only after the module's handler returned.

Real parts: the stand-in's Mosquitto brokers and router, the real azure-iot-device SDK in two
processes (the sender on tests/edgehub/module_app.py, the receiver on our EdgeLink). The receiver
is killed with SIGKILL while its handler still holds a message: nothing has kept it yet, so edgeHub
must deliver it again when the module comes back (the SDK's own path acknowledged it first).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Edge, ModuleProcess, StartEdge

HOLDING_MODULE = Path(__file__).with_name("holding_module.py")
ROUTES = {
    "telemetry": "FROM /messages/modules/sensor/outputs/telemetry"
    ' INTO BrokeredEndpoint("/modules/inference/inputs/telemetry")'
}
TIMEOUT_S = 20.0


class HoldingModule:
    """The receiving inference module process; `events` has one dict per line it printed."""

    def __init__(self, edge: Edge, log_dir: Path) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("IOTEDGE_")}
        env.update(edge.standin.module_environment("inference"))
        env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
        self.stderr = open(log_dir / "inference.stderr", "a")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(
            [sys.executable, str(HOLDING_MODULE)], stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def next_event(self) -> dict[str, Any]:
        try:
            return self.events.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"the module printed nothing for {TIMEOUT_S:.0f} s (stderr in {self.stderr.name})")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.stderr.close()


@pytest.fixture
def sender_and_edge(start_edge: StartEdge, tmp_path: Path) -> Iterator[tuple[Edge, ModuleProcess]]:
    edge = start_edge(ROUTES, processes=False)
    sender = ModuleProcess("sensor", edge.standin.module_environment("sensor"), tmp_path)
    sender.wait_ready()
    yield edge, sender
    sender.close()


def test_a_message_whose_handler_never_returned_is_delivered_again_after_a_kill_9(sender_and_edge, tmp_path):
    edge, sender = sender_and_edge
    receiver = HoldingModule(edge, tmp_path)
    try:
        assert receiver.next_event() == {"ready": True}
        sender.request("send", output="telemetry", body="hold 1", props={"kind": "reading"})
        first = receiver.next_event()
        assert (first["input"], first["body"], first["props"]["kind"]) == ("telemetry", "hold 1", "reading")
    finally:
        receiver.kill()  # inside the handler: the message was kept by nobody

    again = HoldingModule(edge, tmp_path)
    try:
        # The queued message may arrive before connect() returns, that is before "ready".
        events = [again.next_event(), again.next_event()]
    finally:
        again.kill()
    assert {"ready": True} in events
    assert [event["body"] for event in events if "body" in event] == ["hold 1"]
