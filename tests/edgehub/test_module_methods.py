"""Modules call each other's direct methods through the stand-in's HTTPS endpoint, as through edgeHub's.

The SDK always calls port 443 of its GatewayHostName: these tests need root or CAP_NET_BIND_SERVICE
(CI runs as root); without it the stand-in runs without the endpoint and these tests fail.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl

import pytest
from azure.iot.device import IoTHubModuleClient
from azure.iot.device.exceptions import ClientError

from edgehub.standin import EdgeHubStandIn

from .conftest import StartEdge


def test_a_module_invokes_another_modules_method_and_gets_its_payload(start_edge: StartEdge) -> None:
    edge = start_edge({})
    params = {"methodName": "stats", "payload": {"window": 5}, "responseTimeoutInSeconds": 10}

    answer = edge["sensor"].request("invoke", params=params, device="edge1", module="inference")

    assert answer["result"] == {
        "status": 200,
        "payload": {"echo": {"window": 5}, "method": "stats", "module": "inference"},
    }
    assert edge["inference"].request("methods")["methods"] == [{"name": "stats", "payload": {"window": 5}}]
    assert edge.standin.method_endpoint_stats() == {"answered": 1}


def sdk_client(
    monkeypatch: pytest.MonkeyPatch, standin: EdgeHubStandIn, module: str, key: bytes | None = None
) -> IoTHubModuleClient:
    """Return an SDK module client made as modules make it (from the edge environment), maybe with another key."""
    env = standin.module_environment(module)
    if key is not None:
        good = env["EdgeHubConnectionString"].split("SharedAccessKey=")[1]
        env["EdgeHubConnectionString"] = env["EdgeHubConnectionString"].replace(good, base64.b64encode(key).decode())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return IoTHubModuleClient.create_from_edge_environment()


def test_a_method_call_with_a_bad_sas_token_is_refused_with_401(
    start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = start_edge({})
    intruder = sdk_client(monkeypatch, edge.standin, "sensor", key=b"\x01" * 32)
    try:
        with pytest.raises(ClientError) as refused:
            intruder.invoke_method({"methodName": "stats", "payload": {}}, "edge1", "inference")
    finally:
        intruder.shutdown()

    # The SDK wraps the service's answer: "Unexpected failure" caused by the HTTP status.
    assert "HTTP operation returned: 401 UnauthorizedError" in str(refused.value.__cause__)
    assert edge["inference"].request("methods")["methods"] == []
    assert edge.standin.method_endpoint_stats() == {"refused": 1}


def test_a_method_call_to_a_module_that_is_not_connected_gets_404(
    start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = start_edge({}, processes=False)
    caller = sdk_client(monkeypatch, edge.standin, "sensor")
    try:
        with pytest.raises(ClientError) as not_found:
            caller.invoke_method({"methodName": "stats", "payload": {}}, "edge1", "inference")
    finally:
        caller.shutdown()

    assert "HTTP operation returned: 404" in str(not_found.value.__cause__)
    assert edge.standin.method_endpoint_stats() == {"not_found": 1}


def test_a_method_call_that_the_target_does_not_answer_in_time_gets_504(
    start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = start_edge({}, modules=("sensor", "inference"))
    caller = sdk_client(monkeypatch, edge.standin, "sensor")
    params = {"methodName": "ignore", "payload": {}, "responseTimeoutInSeconds": 1}
    try:
        with pytest.raises(ClientError) as timed_out:
            caller.invoke_method(params, "edge1", "inference")
    finally:
        caller.shutdown()

    assert "HTTP operation returned: 504" in str(timed_out.value.__cause__)
    assert edge["inference"].request("methods")["methods"] == [{"name": "ignore", "payload": {}}]


def test_a_method_call_without_credentials_or_caller_header_is_refused_as_edgehub_does(start_edge: StartEdge) -> None:
    edge = start_edge({}, processes=False)
    host = edge.standin.module_host("sensor")
    context = ssl.create_default_context(cafile=str(edge.standin.ca_file))
    body = json.dumps({"methodName": "stats", "payload": {}})

    def post(headers: dict[str, str]) -> tuple[int, dict]:
        connection = http.client.HTTPSConnection(host, 443, context=context, timeout=10)
        try:
            connection.request("POST", "/twins/edge1/modules/inference/methods?api-version=2020-09-30", body, headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    assert post({"Content-Type": "application/json"}) == (
        400,
        {"message": "Invalid header value for x-ms-edge-moduleId"},
    )
    status, answer = post({"x-ms-edge-moduleId": "edge1/sensor"})
    assert status == 401 and "no credentials" in answer["message"]
    status, answer = post({"x-ms-edge-moduleId": "edge2/sensor", "Authorization": "SharedAccessSignature sr=x"})
    assert (status, answer) == (401, {"message": "Only modules on the same device can invoke DirectMethods"})
