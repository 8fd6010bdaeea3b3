"""Store and forward as edgeHub does it, the state-dir lock and message properties (real Mosquitto, SDK modules)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.lake import read_lake
from edgefleet.routes import parse_routes
from edgefleet_cli.local_edge import free_port
from edgehub.standin import EdgeHubStandIn, StandInError, StateDirLock
from tests.edge_fixtures import reading
from tests.hub_logins import HubLogins

from .conftest import EDGE_DEVICE, ModuleProcess, StartEdge, next_ip_base, wait_for
from .test_hub import RunningSink, lake_seqs

TO_INFERENCE = {
    "toInference": (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/inference/inputs/telemetry")'
    )
}
TO_UPSTREAM = {"toUpstream": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream"}


def bodies(module: ModuleProcess) -> list[int]:
    return [json.loads(record["body"])["i"] for record in module.inputs("telemetry")["records"]]


def test_a_message_routed_to_a_module_that_connects_5_s_later_is_delivered_in_order(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge(TO_INFERENCE, processes=False)
    sensor = edge.modules["sensor"] = ModuleProcess("sensor", edge.standin.module_environment("sensor"), tmp_path)
    sensor.wait_ready()

    sensor.request("send", output="telemetry", count=20)
    wait_for(lambda: edge.standin.router.held()["inference"] == 20)
    time.sleep(5)
    inference = edge.modules["inference"] = ModuleProcess(
        "inference", edge.standin.module_environment("inference"), tmp_path
    )
    inference.wait_ready()

    wait_for(lambda: inference.inputs("telemetry", count_only=True)["count"] >= 20, timeout_s=20)
    assert bodies(inference) == list(range(20))
    stats = edge.standin.router.stats()
    assert (stats["held"], stats["held_delivered"], stats["expired"]) == (0, 20, 0)


def test_a_held_message_older_than_its_time_to_live_is_not_delivered_and_is_counted_expired(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge(TO_INFERENCE, processes=False, ttl_s=2)
    sensor = edge.modules["sensor"] = ModuleProcess("sensor", edge.standin.module_environment("sensor"), tmp_path)
    sensor.wait_ready()

    sensor.request("send", output="telemetry", count=5, body={"i": -1})
    wait_for(lambda: edge.standin.router.expired_counts().get("inference") == 5, timeout_s=10)
    inference = edge.modules["inference"] = ModuleProcess(
        "inference", edge.standin.module_environment("inference"), tmp_path
    )
    inference.wait_ready()
    sensor.request("send", output="telemetry", count=1, body={"i": 1})

    wait_for(lambda: inference.inputs("telemetry", count_only=True)["count"] >= 1, timeout_s=20)
    time.sleep(1)  # room for a wrongly delivered expired message to show up
    assert bodies(inference) == [1]
    assert edge.standin.router.stats()["expired"] == 5


def test_messages_held_for_an_absent_module_are_delivered_after_a_standin_restart(tmp_path: Path) -> None:
    def standin() -> EdgeHubStandIn:
        upstream = RecordingUpstream()
        return EdgeHubStandIn(
            tmp_path / "state",
            EDGE_DEVICE,
            ["sensor", "inference"],
            parse_routes(TO_INFERENCE),
            {},
            upstream=upstream,
            ip_base=next_ip_base(),
        )

    first = standin().start()
    try:
        sensor = ModuleProcess("sensor", first.module_environment("sensor"), tmp_path)
        sensor.wait_ready()
        sensor.request("send", output="telemetry", count=30)
        wait_for(lambda: first.router.held()["inference"] == 30)
        sensor.close()
    finally:
        first.stop()

    second = standin().start()
    inference = None
    try:
        assert second.router.stats()["held_restored"] == 30
        inference = ModuleProcess("inference", second.module_environment("inference"), tmp_path)
        inference.wait_ready()
        wait_for(lambda: inference.inputs("telemetry", count_only=True)["count"] >= 30, timeout_s=20)
        assert bodies(inference) == list(range(30))
    finally:
        if inference is not None:
            inference.close()
        second.stop()


class RecordingUpstream:
    """An upstream that takes everything at once (these tests look at module inputs)."""

    def __call__(self, message: object, on_durable: object = None) -> None:
        if callable(on_durable):
            on_durable()

    def stats(self) -> dict[str, int]:
        return {}

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_upstream_messages_are_held_while_the_hub_is_unavailable_and_none_is_lost_when_it_is_back(
    start_edge: StartEdge, tmp_path: Path, hub_logins: HubLogins
) -> None:
    port = free_port()
    edge = start_edge(TO_UPSTREAM, modules=("sensor",), upstream_mqtt=(hub_logins, port))
    readings = [reading("dev-1", seq) for seq in range(1, 41)]

    for item in readings:
        edge["sensor"].request("send", output="telemetry", body=json.dumps(item), content_type="application/json")
    wait_for(lambda: edge.standin.router.held()["$upstream"] == 40)
    assert not edge.standin.healthy()  # the upstream is down: reported

    sink = RunningSink(tmp_path / "hub", port, hub_logins)
    try:
        wait_for(lambda: len(lake_seqs(sink.lake)) >= 40, timeout_s=30)
        assert lake_seqs(sink.lake) == list(range(1, 41))
        assert edge.standin.router.held()["$upstream"] == 0
    finally:
        edge.upstream.close()
        sink.stop()


def test_a_second_standin_on_the_same_state_dir_refuses_to_start_and_names_the_pid(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    start_edge({}, processes=False)
    second = EdgeHubStandIn(
        tmp_path / "state", EDGE_DEVICE, ["sensor"], [], {}, upstream=RecordingUpstream(), ip_base=next_ip_base()
    )

    with pytest.raises(StandInError, match=f"another edgeHub stand-in \\(pid {os.getpid()}\\) uses the state dir"):
        second.start()


def test_the_state_dir_lock_is_released_when_its_holder_is_killed_with_sigkill(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from edgehub.standin import StateDirLock; "
            "StateDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StandInError, match=f"pid {holder.pid}"):
            StateDirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

    StateDirLock(tmp_path).acquire().release()  # the kernel dropped the dead holder's lock


def test_correlation_id_message_id_and_custom_properties_reach_the_receiving_module_and_the_lake(
    start_edge: StartEdge,
) -> None:
    routes = {**TO_INFERENCE, **TO_UPSTREAM}
    edge = start_edge(routes)
    body = json.dumps(reading("dev-1", 7))

    edge["sensor"].request(
        "send",
        output="telemetry",
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        correlation_id="corr-7",
        message_id="msg",
        props={"site": "north", "batch": "3"},
    )

    wait_for(lambda: edge["inference"].inputs("telemetry", count_only=True)["count"] == 1)
    (record,) = edge["inference"].inputs("telemetry")["records"]
    assert (record["cid"], record["mid"], record["ct"], record["ce"]) == (
        "corr-7",
        "msg-0",
        "application/json",
        "utf-8",
    )
    assert record["props"] == {"site": "north", "batch": "3", "$.cdid": EDGE_DEVICE, "$.cmid": "sensor"}

    wait_for(lambda: any(edge.lake_dir.glob("date=*/*.parquet")), timeout_s=10)
    rows: pd.DataFrame = read_lake(edge.lake_dir)
    (row,) = rows.itertuples()
    assert (row.correlation_id, row.message_id) == ("corr-7", "msg-0")
    assert json.loads(row.properties) == {"batch": "3", "site": "north"}
