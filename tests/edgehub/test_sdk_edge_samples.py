"""The Azure IoT Python SDK's edge samples work against the stand-in as against edgeHub.

One test per sample in github.com/Azure/azure-iot-sdk-python `samples/async-edge-scenarios/` (and the
sync edge sample in `samples/sync-samples/`): each makes the calls its sample makes, on the real SDK
(`azure.iot.device.aio.IoTHubModuleClient` for the async samples) created from the edge environment
the stand-in hands out, and asserts what the sample's user would see. The module under test runs in
this process as "sample"; its peer is a real SDK module process ("peer", tests/edgehub/module_app.py).
The stand-in serves module-to-module methods on port 443: these tests need root or CAP_NET_BIND_SERVICE.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.iot.device import IoTHubModuleClient as SyncModuleClient
from azure.iot.device import Message as SdkMessage
from azure.iot.device import MethodRequest, MethodResponse
from azure.iot.device.aio import IoTHubModuleClient

from edgefleet.routes import Message, parse_routes
from edgehub.standin import EdgeHubStandIn

from .conftest import EDGE_DEVICE, CollectingUpstream, ModuleProcess, next_ip_base, wait_for

ROUTES = {
    "twister": 'FROM /messages/modules/sample/outputs/twister INTO BrokeredEndpoint("/modules/peer/inputs/twister")',
    "tracking": 'FROM /messages/modules/sample/outputs/tracking INTO BrokeredEndpoint("/modules/peer/inputs/tracking")',
    "input1": 'FROM /messages/modules/peer/outputs/out1 INTO BrokeredEndpoint("/modules/sample/inputs/input1")',
    "input2": 'FROM /messages/modules/peer/outputs/out2 INTO BrokeredEndpoint("/modules/sample/inputs/input2")',
    "upstream": "FROM /messages/modules/sample/* INTO $upstream",
}
TIMEOUT_S = 15.0
# What edgeHub adds to a message from "sample" as it routes it to a module input (the SDK shows them).
FROM_SAMPLE = {"$.cdid": EDGE_DEVICE, "$.cmid": "sample"}


@dataclass
class SampleEdge:
    """One stand-in for the whole file (starting one costs seconds), with its peer module process."""

    standin: EdgeHubStandIn
    peer: ModuleProcess
    upstream: CollectingUpstream


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleEdge]:
    """Start a stand-in running "sample" (the test's own SDK client) and "peer" (a module process)."""
    folder = tmp_path_factory.mktemp("sdk-samples")
    upstream = CollectingUpstream()
    standin = EdgeHubStandIn(
        folder / "state",
        EDGE_DEVICE,
        ["sample", "peer"],
        parse_routes(ROUTES),
        {},
        upstream=upstream,
        ip_base=next_ip_base(),
    )
    standin.start()
    peer = ModuleProcess("peer", standin.module_environment("peer"), folder)
    try:
        peer.wait_ready()
        yield SampleEdge(standin, peer, upstream)
    finally:
        peer.close()
        standin.stop()


@pytest.fixture
def edge_environment(edge: SampleEdge, monkeypatch: pytest.MonkeyPatch) -> SampleEdge:
    """Give this process the environment IoT Edge gives the "sample" module's container."""
    for name in [name for name in os.environ if name.startswith("IOTEDGE_")]:
        monkeypatch.delenv(name)  # with these the SDK would ask a real edge runtime's workload API
    for name, value in edge.standin.module_environment("sample").items():
        monkeypatch.setenv(name, value)
    return edge


async def until(condition: Any, timeout_s: float = TIMEOUT_S) -> None:
    """Wait, without blocking the SDK's event loop, until `condition()` is true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def peer_records(edge: SampleEdge, input_name: str, ids: set[str]) -> list[dict[str, Any]]:
    """Return what the peer received on an input among the messages with the given ids."""
    return [r for r in edge.peer.inputs(input_name)["records"] if r["mid"] in ids]


# samples/async-edge-scenarios/receive_data.py: handlers for input messages, desired patches, methods.
def test_the_sdks_receive_data_sample_gets_messages_routed_to_its_inputs(edge_environment: SampleEdge) -> None:
    edge = edge_environment
    received: list[SdkMessage] = []

    async def run() -> None:
        client = IoTHubModuleClient.create_from_edge_environment()
        client.on_message_received = received.append
        await client.connect()
        try:
            # The peer sends on out1/out2; the routes carry them to the sample's input1/input2.
            await asyncio.to_thread(edge.peer.request, "send", output="out1", body="one", props={"lane": "1"})
            await asyncio.to_thread(edge.peer.request, "send", output="out2", body="two", props={"lane": "2"})
            await until(lambda: len(received) >= 2)
        finally:
            await client.shutdown()

    asyncio.run(run())

    seen = sorted((m.input_name, m.data, dict(m.custom_properties)) for m in received)
    # As from edgeHub, the SDK also shows who sent each message ($.cdid, $.cmid) among its properties.
    sender = {"$.cdid": EDGE_DEVICE, "$.cmid": "peer"}
    assert seen == [("input1", b"one", {"lane": "1", **sender}), ("input2", b"two", {"lane": "2", **sender})]


# samples/async-edge-scenarios/receive_data.py: its twin_patch_handler.
def test_the_sdks_receive_data_sample_gets_the_desired_patches_applied_to_its_twin(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    patches: list[dict[str, Any]] = []

    async def run() -> None:
        client = IoTHubModuleClient.create_from_edge_environment()
        client.on_twin_desired_properties_patch_received = patches.append
        await client.connect()
        try:
            await asyncio.to_thread(edge.standin.update_desired, "sample", {"threshold": 7, "mode": "fast"})
            await until(lambda: patches)
        finally:
            await client.shutdown()

    asyncio.run(run())

    assert patches[0]["threshold"] == 7 and patches[0]["mode"] == "fast"
    assert patches[0]["$version"] == edge.standin.module_twin("sample")["properties"]["desired"]["$version"]


# samples/async-edge-scenarios/receive_data.py: its coroutine method_handler (get_data: 200, else 400).
def test_the_sdks_receive_data_sample_answers_direct_methods_with_its_handlers_response(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment

    async def run() -> tuple[Any, Any]:
        client = IoTHubModuleClient.create_from_edge_environment()

        async def on_method(request: MethodRequest) -> None:
            status, payload = (200, "some data") if request.name == "get_data" else (400, None)
            await client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

        client.on_method_request_received = on_method
        await client.connect()
        try:
            known = await asyncio.to_thread(edge.standin.invoke_method, "sample", "get_data")
            unknown = await asyncio.to_thread(edge.standin.invoke_method, "sample", "reboot", {"now": True})
            return known.document(), unknown.document()
        finally:
            await client.shutdown()

    known, unknown = asyncio.run(run())

    assert known == {"status": 200, "payload": "some data"}
    assert unknown == {"status": 400, "payload": None}


# samples/async-edge-scenarios/send_message.py: ten messages in parallel with send_message (no output).
def test_the_sdks_send_message_sample_gets_its_parallel_messages_upstream_with_their_properties(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    ids = {str(uuid.uuid4()) for _ in range(10)}

    async def run() -> None:
        client = IoTHubModuleClient.create_from_edge_environment()
        await client.connect()

        async def send(index: int, message_id: str) -> None:
            message = SdkMessage(f"test wind speed {index}")
            message.message_id = message_id
            message.correlation_id = "correlation-1234"
            message.custom_properties["tornado-warning"] = "yes"
            await client.send_message(message)

        try:
            await asyncio.gather(*[send(index, mid) for index, mid in enumerate(sorted(ids), 1)])
        finally:
            await client.shutdown()

    asyncio.run(run())

    def arrived() -> list[Message]:
        return [m for m in edge.upstream.messages if m.system_properties.get("messageId") in ids]

    messages = wait_for(lambda: len(arrived()) == 10 and arrived(), timeout_s=TIMEOUT_S)
    assert {m.system_properties["messageId"] for m in messages} == ids
    assert all(m.output is None and m.connection_module_id == "sample" for m in messages)
    assert all(m.properties == {"tornado-warning": "yes"} for m in messages)
    assert {m.system_properties["correlationId"] for m in messages} == {"correlation-1234"}
    assert sorted(m.body for m in messages) == sorted(f"test wind speed {i}".encode() for i in range(1, 11))


# samples/async-edge-scenarios/send_message_to_output.py: nine messages in parallel to output "twister".
def test_the_sdks_send_message_to_output_sample_gets_its_messages_routed_to_the_next_modules_input(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    ids = {str(uuid.uuid4()) for _ in range(9)}

    async def run() -> None:
        client = IoTHubModuleClient.create_from_edge_environment()
        await client.connect()

        async def send(index: int, message_id: str) -> None:
            message = SdkMessage(f"test wind speed {index}")
            message.message_id = message_id
            message.correlation_id = "correlation-1234"
            message.custom_properties["tornado-warning"] = "yes"
            await client.send_message_to_output(message, "twister")

        try:
            await asyncio.gather(*[send(index, mid) for index, mid in enumerate(sorted(ids), 1)])
        finally:
            await client.shutdown()

    asyncio.run(run())

    records = wait_for(lambda: len(peer_records(edge, "twister", ids)) == 9 and peer_records(edge, "twister", ids))
    assert {r["mid"] for r in records} == ids
    assert all(r["input"] == "twister" and r["cid"] == "correlation-1234" for r in records)
    assert all(r["props"] == {"tornado-warning": "yes", **FROM_SAMPLE} for r in records)
    assert sorted(r["body"] for r in records) == sorted(f"test wind speed {i}" for i in range(1, 10))


# samples/sync-samples/send_message_to_output.py: the sync client; Message objects to "twister" (with
# content type and encoding), then plain strings to "tracking".
def test_the_sdks_sync_send_message_to_output_sample_gets_messages_and_plain_strings_routed(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    ids = {str(uuid.uuid4()) for _ in range(5)}
    marker = uuid.uuid4().hex  # the plain strings carry no id: tell this test's apart by their text
    client = SyncModuleClient.create_from_edge_environment()
    client.connect()
    try:
        for index, message_id in enumerate(sorted(ids), 1):
            message = SdkMessage(f"test wind speed {index}")
            message.message_id = message_id
            message.correlation_id = "correlation-1234"
            message.custom_properties["tornado-warning"] = "yes"
            message.content_encoding = "utf-8"
            message.content_type = "application/json"
            client.send_message_to_output(message, "twister")
        for index in range(6, 11):
            client.send_message_to_output(f"test payload message {index} {marker}", "tracking")
    finally:
        client.shutdown()

    def tracked() -> list[str]:
        return [r["body"] for r in edge.peer.inputs("tracking")["records"] if marker in r["body"]]

    records = wait_for(lambda: len(peer_records(edge, "twister", ids)) == 5 and peer_records(edge, "twister", ids))
    assert all(r["ct"] == "application/json" and r["ce"] == "utf-8" for r in records)
    assert all(r["props"] == {"tornado-warning": "yes", **FROM_SAMPLE} for r in records)
    assert {r["cid"] for r in records} == {"correlation-1234"}
    bodies = wait_for(lambda: len(tracked()) == 5 and tracked())
    assert sorted(bodies) == sorted(f"test payload message {i} {marker}" for i in range(6, 11))


# samples/async-edge-scenarios/update_twin_reported_properties.py: one reported patch.
def test_the_sdks_update_twin_reported_properties_sample_shows_its_patch_in_the_module_twin(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    temperature = 32.0 + uuid.uuid4().int % 480 / 10

    async def run() -> dict[str, Any]:
        client = IoTHubModuleClient.create_from_edge_environment()
        await client.connect()
        try:
            await client.patch_twin_reported_properties({"temperature": temperature})
            twin: dict[str, Any] = await client.get_twin()  # what the module reads back
            return twin
        finally:
            await client.shutdown()

    read_back = asyncio.run(run())

    assert read_back["reported"]["temperature"] == temperature
    shown = edge.standin.module_twin("sample")  # what `az iot hub module-twin show` would print
    assert shown["properties"]["reported"]["temperature"] == temperature
    assert shown["properties"]["reported"]["$version"] == read_back["reported"]["$version"]


# samples/async-edge-scenarios/invoke_method_on_module.py: one module calls another module's method.
def test_the_sdks_invoke_method_on_module_sample_gets_the_other_modules_payload(
    edge_environment: SampleEdge,
) -> None:
    edge = edge_environment
    params = {
        "methodName": "doSomethingInteresting",
        "payload": "foo",
        "responseTimeoutInSeconds": 5,
        "connectTimeoutInSeconds": 2,
    }

    async def run() -> dict[str, Any]:
        client = IoTHubModuleClient.create_from_edge_environment()
        await client.connect()
        try:
            response: dict[str, Any] = await client.invoke_method(
                device_id=EDGE_DEVICE, module_id="peer", method_params=params
            )
            return response
        finally:
            await client.shutdown()

    response = asyncio.run(run())

    # The peer (module_app.py) answers every method with an echo of its request.
    assert response == {
        "status": 200,
        "payload": {"echo": "foo", "method": "doSomethingInteresting", "module": "peer"},
    }
    assert {"name": "doSomethingInteresting", "payload": "foo"} in edge.peer.request("methods")["methods"]
