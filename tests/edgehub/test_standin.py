"""End to end: real Mosquitto, the real router and real azure-iot-device modules in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgefleet.history import read_history
from edgefleet.lake import DEADLETTER_DIR, EVENTS_DIR
from edgefleet.routes import parse_routes
from edgehub import router as router_module
from edgehub.standin import EdgeHubStandIn, StandInError, run_standin
from tests.edge_fixtures import module_mqtt_client

from .conftest import CollectingUpstream, ModuleProcess, StartEdge, next_ip_base, wait_for

JSON = {"content_type": "application/json", "content_encoding": "utf-8"}


def route(output: str, input_name: str, where: str = "") -> str:
    """Return a route from a sensor output to an inference input."""
    source = f"/messages/modules/sensor/outputs/{output}"
    condition = f" WHERE {where}" if where else ""
    return f'FROM {source}{condition} INTO BrokeredEndpoint("/modules/inference/inputs/{input_name}")'


TELEMETRY_ROUTE = route("telemetry", "telemetry")


def reading(seq: int, device: str = "dev-1") -> dict[str, object]:
    return {
        "schema": "edgefleet.telemetry/1",
        "device_id": device,
        "seq": seq,
        "ts": "2026-11-20T10:00:00Z",
        "features": {"temp": 20.0 + seq, "vib": 0.5},
        "label": 1.5,
    }


def test_a_module_output_reaches_the_routed_input_with_its_properties_and_content_type(start_edge: StartEdge) -> None:
    edge = start_edge({"telemetry": TELEMETRY_ROUTE})
    body = reading(1)
    edge["sensor"].request(
        "send", output="telemetry", body=body, props={"kind": "reading", "odd key/&=": "a+b c%"}, **JSON
    )

    records = wait_for(lambda: edge["inference"].inputs("telemetry")["records"])

    assert len(records) == 1
    received = records[0]
    assert received["input"] == "telemetry"
    assert received["ct"] == "application/json"
    assert received["ce"] == "utf-8"
    assert received["props"]["kind"] == "reading"
    assert received["props"]["odd key/&="] == "a+b c%"
    # Like edgeHub, the stand-in names the sending connection; the SDK exposes it as a custom property.
    assert received["props"]["$.cmid"] == "sensor"
    assert json.loads(received["body"]) == body
    assert edge["sensor"].inputs("telemetry")["count"] == 0  # nothing echoes back to the sender


def test_where_routes_filter_on_body_fields_and_application_properties(start_edge: StartEdge) -> None:
    edge = start_edge(
        {
            "severe": route("alerts", "severe", "$body.severity >= 3"),
            "pump": route("alerts", "pump", "kind = 'alert' AND site = 'pump-7'"),
            "done": route("done", "done"),
        }
    )
    sensor = edge["sensor"]
    pump7 = {"kind": "alert", "site": "pump-7"}
    sensor.request("send", output="alerts", body={"n": 1, "severity": 5}, props=pump7, **JSON)
    sensor.request("send", output="alerts", body={"n": 2, "severity": 1}, props=pump7, **JSON)
    sensor.request("send", output="alerts", body={"n": 3, "severity": 4}, props={**pump7, "site": "fan-2"}, **JSON)
    # Without content type and encoding edgeHub cannot read the body: $body conditions are undefined.
    sensor.request("send", output="alerts", body={"n": 4, "severity": 9}, props={**pump7, "kind": "note"})
    sensor.request("send", output="done", body={"n": 0})
    # Deliveries to one module keep their order, so once `done` is in, everything before it is too.
    wait_for(lambda: edge["inference"].inputs("done")["count"])

    def numbers(input_name: str) -> list[int]:
        return sorted(json.loads(r["body"])["n"] for r in edge["inference"].inputs(input_name)["records"])

    assert numbers("severe") == [1, 3]
    assert numbers("pump") == [1, 2]


def test_each_module_reads_its_own_twin_and_a_desired_patch_reaches_only_its_target(start_edge: StartEdge) -> None:
    edge = start_edge(
        {"telemetry": TELEMETRY_ROUTE},
        desired={"sensor": {"sample_s": 5, "site": "pump-7"}, "inference": {"threshold": 0.8}},
    )

    sensor_twin = edge["sensor"].request("get_twin")["twin"]
    inference_twin = edge["inference"].request("get_twin")["twin"]

    assert sensor_twin["desired"] == {"sample_s": 5, "site": "pump-7", "$version": 1}
    assert inference_twin["desired"] == {"threshold": 0.8, "$version": 1}

    version = edge.standin.router.apply_desired_patch("inference", {"threshold": 0.9, "model": "v2"})
    assert version == 2
    patches = wait_for(lambda: edge["inference"].request("patches")["patches"])
    assert patches[-1] == {"threshold": 0.9, "model": "v2", "$version": 2}
    assert edge["inference"].request("get_twin")["twin"]["desired"] == {"threshold": 0.9, "model": "v2", "$version": 2}
    # The other module saw nothing: no patch, and its twin is unchanged.
    assert all("model" not in patch for patch in edge["sensor"].request("patches")["patches"])
    assert edge["sensor"].request("get_twin")["twin"]["desired"]["$version"] == 1

    edge["sensor"].request("patch_reported", patch={"firmware": "1.2.3", "health": {"ok": True}})
    edge["sensor"].request("patch_reported", patch={"health": {"battery": 0.7}})

    assert edge.standin.router.twin("sensor")["reported"] == {
        "firmware": "1.2.3",
        "health": {"ok": True, "battery": 0.7},
        "$version": 3,
    }
    assert edge["sensor"].request("get_twin")["twin"]["reported"]["firmware"] == "1.2.3"
    assert edge.standin.router.twin("inference")["reported"] == {"$version": 1}


def test_a_direct_method_invoked_by_the_router_returns_the_module_response(start_edge: StartEdge) -> None:
    edge = start_edge({"telemetry": TELEMETRY_ROUTE})

    status, payload = edge.standin.router.invoke_method("inference", "reload", {"bundle": "v7"}, timeout_s=10)
    fail_status, _ = edge.standin.router.invoke_method("sensor", "fail", None, timeout_s=10)

    assert status == 200
    assert payload == {"echo": {"bundle": "v7"}, "method": "reload", "module": "inference"}
    assert fail_status == 500
    assert edge["inference"].request("methods")["methods"] == [{"name": "reload", "payload": {"bundle": "v7"}}]
    assert edge["sensor"].request("methods")["methods"] == [{"name": "fail", "payload": None}]


def test_upstream_readings_predictions_and_batches_land_in_the_lake(start_edge: StartEdge) -> None:
    edge = start_edge(
        {
            "raw": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream",
            "predictions": "FROM /messages/modules/inference/outputs/predictions INTO $upstream",
            "deadletters": "FROM /messages/modules/inference/outputs/deadletter INTO $upstream",
            "twin": "FROM /twinChangeNotifications INTO $upstream",
        }
    )
    batch = {"schema": "edgefleet.batch/1", "readings": [reading(seq, f"dev-{seq % 4}") for seq in range(100)]}
    prediction = {
        **reading(500, "dev-9"),
        "prediction": {"value": 3.25, "model": "fleet", "model_version": "b1", "fallback_reason": "no_model"},
        "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T10:00:01Z", "latency_ms": 4.5},
    }
    deadletter = {
        "schema": "edgefleet.deadletter/1",
        "reason": "not_json",
        "detail": "x",
        "source": "inference/telemetry",
        "payload": "{",
    }
    edge["sensor"].request("send", output="telemetry", body=batch, **JSON)
    edge["sensor"].request("send", output="telemetry", body=reading(200), **JSON)
    edge["inference"].request("send", output="predictions", body=prediction, **JSON)
    edge["inference"].request("send", output="deadletter", body=deadletter, **JSON)
    edge["inference"].request("patch_reported", patch={"bundle_version": "b1"})

    sink = edge.sink
    wait_for(lambda: sink.stats().get("rows_written", 0) >= 102 and sink.stats().get("events", 0) >= 1)

    lake = pd.read_parquet(edge.lake_dir)
    assert len(lake) == 102
    assert (lake["source_module"] == "sensor").sum() == 101
    predicted = lake[lake["source_module"] == "inference"].iloc[0]
    assert predicted["device_id"] == "dev-9"
    assert predicted["prediction_value"] == 3.25
    assert predicted["prediction_fallback_reason"] == "no_model"
    assert predicted["edge_latency_ms"] == 4.5
    assert lake["prediction_value"].isna().sum() == 101
    assert sorted(lake.loc[lake["source_module"] == "sensor", "seq"]) == [*range(100), 200]
    history, features = read_history(edge.lake_dir)  # training reads the same lake, side files and all
    assert features == ("temp", "vib") and len(history) == 102
    lines = [json.loads(line) for f in (edge.lake_dir / DEADLETTER_DIR).glob("*.jsonl") for line in f.open()]
    assert [line["reason"] for line in lines] == ["not_json"]
    assert lines[0]["received_from"] == "inference/deadletter"
    events = [json.loads(line) for f in (edge.lake_dir / EVENTS_DIR).glob("*.jsonl") for line in f.open()]
    assert [(e["kind"], e["source_module"], e["body"]) for e in events] == [
        ("twin_change_notification", "inference", {"version": 2, "properties": {"reported": {"bundle_version": "b1"}}})
    ]


@pytest.mark.parametrize("window", [router_module.PUBLISH_WINDOW, 1], ids=["default-window", "window-of-one"])
def test_a_burst_of_5000_qos1_messages_all_arrive(
    start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    # A tiny publish window makes the router wait for PUBACKs all the time: nothing may be lost then either.
    monkeypatch.setattr(router_module, "PUBLISH_WINDOW", window)
    edge = start_edge({"burst": route("burst", "burst")})

    edge["sensor"].request("send", output="burst", count=5000, workers=8, timeout_s=60)

    def arrived() -> int | None:
        got = edge["inference"].inputs("burst", count_only=True)
        return got["count"] if got["count"] >= 5000 else None

    wait_for(arrived, timeout_s=30, interval_s=0.2)
    final = edge["inference"].inputs("burst", count_only=True)
    assert final == {"id": final["id"], "count": 5000, "distinct": 5000}
    stats = edge.standin.router.stats()
    assert stats["received"] == stats["to_module"] == 5000
    assert "rejected" not in stats
    assert wait_for(lambda: edge.standin.router.unacknowledged() == {"sensor": 0, "inference": 0})


def test_a_module_cannot_publish_on_its_broker_as_another_module(start_edge: StartEdge) -> None:
    edge = start_edge({"telemetry": TELEMETRY_ROUTE, "all": "FROM /messages/* INTO $upstream"}, processes=False)
    standin = edge.standin
    spoofer = module_mqtt_client(standin.module_identity("sensor"), standin.ca_file)
    spoofer.connect(standin.module_host("sensor"), 8883)
    spoofer.loop_start()
    try:
        # Connected to sensor's broker with sensor's key, publishing on inference's topic: the
        # broker's ACL drops it (acknowledged, as MQTT 3.1.1 cannot say no), the router never sees it.
        spoofed = spoofer.publish("devices/edge1/modules/inference/messages/events/%24.on=telemetry", b"{}", qos=1)
        spoofed.wait_for_publish(5)
        own = spoofer.publish("devices/edge1/modules/sensor/messages/events/%24.on=telemetry", b"{}", qos=1)
        own.wait_for_publish(5)
        wait_for(lambda: standin.router.stats().get("received"))
    finally:
        spoofer.disconnect()
        spoofer.loop_stop()

    stats = standin.router.stats()
    assert stats["received"] == 1  # its own message only
    assert "rejected" not in stats


def test_the_standin_refuses_desired_properties_for_modules_it_does_not_run(tmp_path: Path) -> None:
    with pytest.raises(StandInError, match="does not run"):
        EdgeHubStandIn(tmp_path, "edge1", ["sensor"], parse_routes({}), {"ghost": {}}, upstream=CollectingUpstream())


def test_module_environment_names_the_module_gateway_and_ca(tmp_path: Path) -> None:
    standin = EdgeHubStandIn(
        tmp_path, "edge1", ["sensor", "inference"], [], {}, upstream=CollectingUpstream(), ip_base="127.0.9"
    )

    env = standin.module_environment("inference")

    assert env["EdgeModuleCACertificateFile"] == str(tmp_path / "public" / "ca.pem")
    fields = dict(part.split("=", 1) for part in env["EdgeHubConnectionString"].split(";"))
    assert fields["GatewayHostName"] == "127.0.9.11"
    assert fields["DeviceId"] == "edge1" and fields["ModuleId"] == "inference"
    assert not any(key.startswith("IOTEDGE_") for key in env)


def test_run_standin_serves_until_stopped_and_writes_module_env_files(tmp_path: Path) -> None:
    ip_base = next_ip_base()
    standin = EdgeHubStandIn(
        tmp_path / "state",
        "edge1",
        ("sensor", "inference"),
        parse_routes({"telemetry": TELEMETRY_ROUTE}),
        {"inference": {"threshold": 1}},
        upstream=CollectingUpstream(),
        ip_base=ip_base,
    )
    stop = threading.Event()
    seen: list[dict[str, Any]] = []
    health_file = tmp_path / "healthy"
    thread = threading.Thread(
        target=run_standin,
        args=(standin, stop),
        kwargs={"health_file": health_file, "on_ready": lambda s: seen.append(s.router.twin("inference"))},
    )
    thread.start()
    try:
        wait_for(lambda: seen)
        env_file = tmp_path / "state" / "modules" / "inference.env"
        assert f"GatewayHostName={ip_base}.11;" in env_file.read_text()
        assert seen[0]["desired"] == {"threshold": 1, "$version": 1}
        assert health_file.exists()
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()


def test_modules_can_be_given_their_own_broker_addresses_as_under_docker_compose(tmp_path: Path) -> None:
    block = next_ip_base()
    hosts = {"sensor": f"{block}.21", "inference": f"{block}.33"}
    standin = EdgeHubStandIn(
        tmp_path / "state",
        "edge1",
        ["sensor", "inference"],
        [],
        {"sensor": {"site": "a"}, "inference": {"site": "b"}},
        upstream=CollectingUpstream(),
        ip_base="127.0.0",
        module_hosts=hosts,
    )
    assert standin.module_host("inference") == hosts["inference"]
    with standin:
        module = ModuleProcess("inference", standin.module_environment("inference"), tmp_path)
        try:
            module.wait_ready()
            assert module.request("get_twin")["twin"]["desired"]["site"] == "b"
        finally:
            module.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modules_trust_the_published_ca_certificate_and_never_see_a_private_key(tmp_path: Path) -> None:
    state, public = tmp_path / "state", tmp_path / "ca-volume"
    standin = EdgeHubStandIn(
        state,
        "edge1",
        ["sensor", "inference"],
        parse_routes({"telemetry": TELEMETRY_ROUTE}),
        {"inference": {"site": "b"}},
        upstream=CollectingUpstream(),
        ip_base=next_ip_base(),
        ca_export_dir=public,
    )
    with standin:
        env_files = standin.write_env_files()
        env = standin.module_environment("inference")
        assert env["EdgeModuleCACertificateFile"] == str(public / "ca.pem")
        module = ModuleProcess("inference", env, tmp_path)
        try:
            module.wait_ready()
            assert module.request("get_twin")["twin"]["desired"]["site"] == "b"
        finally:
            module.close()

        # what modules mount: the CA certificate alone, readable by any uid
        assert sorted(os.listdir(public)) == ["ca.pem"]
        assert "PRIVATE KEY" not in (public / "ca.pem").read_text()
        assert (public / "ca.pem").read_bytes() == (state / "certs" / "ca.pem").read_bytes()
        assert (mode(public), mode(public / "ca.pem")) == (0o755, 0o644)
        # what stays in the state dir: owner only
        assert mode(state) == mode(state / "certs") == 0o700
        assert mode(state / "certs" / "ca.key") == mode(state / "certs" / "server.key") == 0o600
        assert mode(state / "modules") == 0o700
        assert {mode(path) for path in env_files.values()} == {0o600}
        assert mode(state / "brokers") == mode(state / "journal") == 0o700
        assert {mode(log) for log in (state / "brokers").glob("*.log")} == {0o600}


@pytest.mark.parametrize("where", [".", "..", "certs", "certs/public"])
def test_the_standin_refuses_to_publish_its_ca_where_modules_would_see_its_keys(tmp_path: Path, where: str) -> None:
    state = tmp_path / "edgehub"
    with pytest.raises(StandInError, match="private keys"):
        EdgeHubStandIn(state, "edge1", ["sensor"], [], {}, upstream=CollectingUpstream(), ca_export_dir=state / where)


def test_module_hosts_must_be_distinct_ip_addresses_of_known_modules(tmp_path: Path) -> None:
    def make(hosts: dict[str, str]) -> EdgeHubStandIn:
        return EdgeHubStandIn(
            tmp_path, "edge1", ["sensor", "inference"], [], {}, upstream=CollectingUpstream(), module_hosts=hosts
        )

    with pytest.raises(StandInError, match="IP address"):
        make({"sensor": "edgehub"})
    with pytest.raises(StandInError, match="its own address"):
        make({"sensor": "10.0.0.2", "inference": "10.0.0.2"})
    with pytest.raises(StandInError, match="does not run"):
        make({"pump": "10.0.0.2"})


def test_the_router_subscribes_again_after_a_module_broker_is_killed_and_loses_its_session(
    start_edge: StartEdge,
) -> None:
    edge = start_edge({"all": "FROM /messages/* INTO $upstream"}, processes=False)
    broker = edge.standin._brokers[edge.standin.modules.index("inference")]
    pid = broker.pid
    assert pid is not None
    # Killed before its first autosave: the restarted broker knows no session, the router's included.
    os.kill(pid, signal.SIGKILL)
    # The stand-in's broker keeper may have started it again before we look: a new pid counts too.
    wait_for(lambda: not broker.running() or broker.pid != pid)
    broker.start()

    module = module_mqtt_client(edge.standin.module_identity("inference"), edge.standin.ca_file)
    module.connect(edge.standin.module_host("inference"), 8883)
    module.loop_start()
    try:
        # Published until one is routed: the router's reconnect may take a moment.
        def routed() -> int:
            module.publish("devices/edge1/modules/inference/messages/events/%24.on=telemetry", b"{}", qos=1)
            return edge.standin.router.stats().get("received", 0)

        wait_for(routed, timeout_s=15, interval_s=0.3)
    finally:
        module.disconnect()
        module.loop_stop()
