"""The local IoT Hub as an MQTT hop: the stand-in publishes `$upstream`, `edgefleet sink` writes the lake."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.hub_wire import HubAddressError, format_hub_topic, parse_hub_address, parse_hub_message
from edgefleet.lake import EVENTS_DIR
from edgefleet.routes import Message
from edgefleet_cli.local_edge import free_port
from edgehub.sink_service import SinkService
from edgehub.sink_settings import SinkSettings
from tests.hub_logins import HubLogins

from .conftest import StartEdge, wait_for

JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def reading(seq: int, device: str = "dev-1") -> dict[str, object]:
    return {
        "schema": "edgefleet.telemetry/1",
        "device_id": device,
        "seq": seq,
        "ts": "2026-11-20T10:00:00Z",
        "features": {"temp": 20.0 + seq},
    }


def telemetry(seq: int) -> Message:
    return Message("edge1", "sensor", "telemetry", {"kind": "reading"}, JSON, json.dumps(reading(seq)).encode())


def lake_seqs(lake: Path) -> list[int]:
    if not any(lake.glob("date=*/*.parquet")):
        return []
    return sorted(pd.read_parquet(lake)["seq"].tolist())


class RunningSink:
    def __init__(self, tmp_path: Path, port: int, logins: HubLogins) -> None:
        self.lake = tmp_path / "lake"
        self.settings = SinkSettings(
            listen=("127.0.0.1", port),
            users_file=logins.users_file,
            lake_dir=self.lake,
            state_dir=tmp_path / "sink",
            flush_every_s=0.2,
            roll_every_s=0.2,
        )
        self.stop_event = threading.Event()
        self.service = SinkService(self.settings)
        ready = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop_event, lambda _: ready.set()))
        self.thread.start()
        assert ready.wait(20), "the sink did not start"

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[list[RunningSink]]:
    started: list[RunningSink] = []
    yield started
    for sink in started:
        if sink.thread.is_alive():
            sink.stop()


def test_a_hub_topic_carries_identity_output_and_every_property() -> None:
    message = Message(
        "edge1",
        "inference",
        "deadletter",
        {"reason": "not_json", "odd key/&=": "a+b c%"},
        {**JSON, "messageId": "m-1"},
        b"\x00raw",
    )

    back = parse_hub_message(format_hub_topic(message), message.body)

    assert (back.connection_device_id, back.connection_module_id, back.output) == ("edge1", "inference", "deadletter")
    assert back.properties == {"reason": "not_json", "odd key/&=": "a+b c%"}
    assert back.system_properties == {**JSON, "messageId": "m-1"}
    assert back.body == b"\x00raw"
    assert back.kind == "telemetry"


def test_a_twin_change_notification_stays_one_on_the_hub() -> None:
    message = Message("edge1", "sensor", None, {"opType": "updateTwin"}, JSON, b"{}", kind="twin_change_notification")

    back = parse_hub_message(format_hub_topic(message), b"{}")

    assert back.kind == "twin_change_notification"
    assert back.output is None


@pytest.mark.parametrize("text", ["sink", "sink:", ":1883", "sink:http", "sink:70000"])
def test_a_hub_address_without_a_port_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(HubAddressError, match=r"HOST:PORT; write e\.g\. sink:1883"):
        parse_hub_address(text)


def test_messages_published_to_the_sink_service_become_lake_rows(
    tmp_path: Path, sinks: list[RunningSink], hub_logins: HubLogins
) -> None:
    port = free_port()
    sinks.append(RunningSink(tmp_path, port, hub_logins))
    publisher = hub_logins.publisher(port, "test-publisher")
    for seq in range(500):
        publisher(telemetry(seq))
    publisher(Message("edge1", "inference", "alerts", {}, JSON, b'{"schema": "edgefleet.alert/1"}'))

    assert publisher.close(timeout_s=10)
    seqs = wait_for(lambda: (s := lake_seqs(sinks[0].lake)) and len(s) == 500 and s)
    assert seqs == list(range(500))
    events = wait_for(lambda: list((sinks[0].lake / EVENTS_DIR).glob("*.jsonl")))
    assert "edgefleet.alert/1" in events[0].read_text()


def test_nothing_is_lost_while_the_sink_service_restarts(
    tmp_path: Path, sinks: list[RunningSink], hub_logins: HubLogins
) -> None:
    port = free_port()
    sinks.append(RunningSink(tmp_path, port, hub_logins))
    publisher = hub_logins.publisher(port, "test-publisher", window=50)
    for seq in range(200):
        publisher(telemetry(seq))
    wait_for(lambda: publisher.outstanding() == 0)

    sinks[0].stop()
    # Published while the hub is down: paho keeps them until the hub is back.
    sender = threading.Thread(target=lambda: [publisher(telemetry(seq)) for seq in range(200, 400)])
    sender.start()
    sinks.append(RunningSink(tmp_path, port, hub_logins))
    sender.join(30)

    assert publisher.close(timeout_s=20)
    assert wait_for(lambda: len(lake_seqs(sinks[1].lake)) >= 400 and lake_seqs(sinks[1].lake)) == list(range(400))


def test_the_stand_in_sends_upstream_to_the_sink_service_when_told_to(
    tmp_path: Path, start_edge: StartEdge, sinks: list[RunningSink], hub_logins: HubLogins
) -> None:
    port = free_port()
    sinks.append(RunningSink(tmp_path / "hub", port, hub_logins))
    edge = start_edge(
        {"up": "FROM /messages/modules/sensor/outputs/* INTO $upstream"},
        modules=("sensor",),
        upstream_mqtt=(hub_logins, port),
    )
    for seq in range(5):
        edge["sensor"].request(
            "send", output="telemetry", body=reading(seq), content_type="application/json", content_encoding="utf-8"
        )

    assert wait_for(lambda: len(lake_seqs(sinks[0].lake)) == 5 and lake_seqs(sinks[0].lake)) == list(range(5))
    assert not any(edge.lake_dir.glob("date=*"))  # the stand-in wrote no lake of its own
    assert edge.standin.healthy()


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
import {module}
"""


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("edgehub.sink_service", {"cryptography", "pyspark", "mlflow"}),
        ("edgehub.standin", {"pandas", "pyarrow", "pyspark", "mlflow"}),
        ("edgehub.__main__", {"pandas", "pyarrow", "pyspark", "mlflow"}),
        ("edgehub.hub", {"pandas", "cryptography"}),
    ],
)
def test_each_service_imports_without_the_packages_its_image_leaves_out(module: str, blocked: set[str]) -> None:
    import subprocess
    import sys

    code = BLOCK.format(blocked=sorted(blocked), module=module)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
