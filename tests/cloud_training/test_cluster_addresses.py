"""Master addresses, reachability and Connect progress: pure logic, no cluster."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from cloud_training.cluster import (
    ClusterError,
    ConnectProgress,
    check_master,
    is_connect,
    job_failure,
    master_endpoints,
)

pytestmark = pytest.mark.fast


def test_standalone_and_connect_masters_name_their_endpoints_with_default_ports() -> None:
    assert master_endpoints("spark://10.0.0.5") == [("10.0.0.5", 7077)]
    assert master_endpoints("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    assert master_endpoints("sc://host:15102/;token=abc;use_ssl=true") == [("host", 15102)]
    assert master_endpoints("sc://host") == [("host", 15002)]
    assert master_endpoints("local[2]") == [] and master_endpoints("yarn") == []
    assert is_connect("sc://host:15002") and not is_connect("spark://host:7077")


def test_a_master_address_without_a_number_for_a_port_is_a_user_error() -> None:
    with pytest.raises(ClusterError, match="is not a number"):
        master_endpoints("spark://host:port")


def test_a_closed_port_fails_naming_the_address_and_the_fix() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ClusterError, match=rf"Spark Connect server at 127.0.0.1:{port}.*start-connect-server"):
            check_master(f"sc://127.0.0.1:{port}", timeout_s=1.0)


def test_a_listening_master_passes_the_check() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_master(f"spark://127.0.0.1:{server.getsockname()[1]}", timeout_s=1.0)


def test_connect_progress_reports_tasks_done_over_tasks_of_the_running_stages() -> None:
    seen: list[tuple[int, int]] = []
    progress = ConnectProgress(lambda done, total: seen.append((done, total)))
    stages = [SimpleNamespace(num_completed_tasks=3, num_tasks=8), SimpleNamespace(num_completed_tasks=1, num_tasks=2)]
    progress(stages, inflight_tasks=2, operation_id="op", done=False)
    progress([], inflight_tasks=0, operation_id="op", done=True)
    assert seen == [(4, 10)]


def test_bugs_are_not_dressed_up_as_cluster_failures() -> None:
    assert job_failure(ValueError("a bug")) is None
    assert job_failure(ClusterError("down")) is not None


def test_a_lost_connect_server_is_reported_by_the_grpc_details_in_one_line() -> None:
    from grpc import StatusCode
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    text = (
        "<_MultiThreadedRendezvous of RPC that terminated with:\n\tstatus = StatusCode.UNAVAILABLE\n"
        '\tdetails = "failed to connect to all addresses; last error: Connection refused"\n>'
    )
    failure = job_failure(SparkConnectGrpcException(text, grpc_status_code=StatusCode.UNAVAILABLE))
    assert isinstance(failure, ClusterError)
    assert str(failure) == (
        "Lost the Spark Connect server (failed to connect to all addresses; last error: Connection refused): "
        "check that it runs (sbin/start-connect-server.sh) and run the job again"
    )
    analysis = SparkConnectGrpcException("[TABLE_OR_VIEW_NOT_FOUND] x", grpc_status_code=StatusCode.INTERNAL)
    assert job_failure(analysis) is None
