"""Where the jobs run: Spark masters (local, standalone, Spark Connect) and the MLflow server, checked before use.

A `sc://host:port` master is a Spark Connect server: the client holds no JVM, so nothing here may
reach for a SparkContext. A remote master or tracking server that does not answer fails in seconds
with one line saying what to check, instead of a JVM stack trace or minutes of retries.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from edgefleet.errors import EdgefleetError

__all__ = [
    "CONNECT_SCHEME",
    "ClusterError",
    "ConnectProgress",
    "TrackingServerError",
    "check_master",
    "check_tracking_server",
    "is_connect",
    "job_failure",
    "master_endpoints",
]

logger = logging.getLogger(__name__)

CONNECT_SCHEME = "sc://"
STANDALONE_SCHEME = "spark://"
DEFAULT_PORTS = {CONNECT_SCHEME: 15002, STANDALONE_SCHEME: 7077}
CONNECT_TIMEOUT_S = 3.0
_RESTART = "check that it runs (sbin/start-connect-server.sh) and run the job again"
_LOST = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})  # gRPC codes of a server that went away
# MLflow retries a failing HTTP call 7 times with doubling backoff (minutes); a job fails sooner.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


class ClusterError(EdgefleetError):
    """Raise when the Spark master or Connect server cannot be reached or is lost mid-job."""


class TrackingServerError(EdgefleetError):
    """Raise when the MLflow tracking server cannot be reached or answers with an error."""


def is_connect(master: str) -> bool:
    """Return True for a Spark Connect address (`sc://host:port`)."""
    return master.strip().lower().startswith(CONNECT_SCHEME)


def master_endpoints(master: str) -> list[tuple[str, int]]:
    """Return the (host, port) pairs a standalone or Connect master names; none for local or cluster managers."""
    text = master.strip()
    scheme = next((s for s in DEFAULT_PORTS if text.lower().startswith(s)), None)
    if scheme is None:
        return []
    rest = text[len(scheme) :].split("/", 1)[0].split(";", 1)[0]
    endpoints = []
    for item in rest.split(","):  # spark://h1:7077,h2:7077 names standby masters
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ClusterError(f"--master {master!r}: write {scheme}HOST:PORT")
        try:
            endpoints.append((host.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]))
        except ValueError:
            raise ClusterError(f"--master {master!r}: the port {port!r} is not a number") from None
    return endpoints


def check_master(master: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast unless one of the master's addresses accepts a TCP connection."""
    endpoints = master_endpoints(master)
    if not endpoints:
        return
    errors = []
    for host, port in endpoints:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as err:
            errors.append(f"{host}:{port} ({err.strerror or err})")
    what = "Spark Connect server" if is_connect(master) else "Spark master"
    start = (
        "start it (sbin/start-connect-server.sh) or fix --master"
        if is_connect(master)
        else "start it (sbin/start-master.sh) or fix --master"
    )
    raise ClusterError(f"Cannot reach the {what} at {', '.join(errors)}: {start}")


def check_tracking_server(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast unless an HTTP tracking server answers its health check; bound MLflow's retries."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    url = tracking_uri.rstrip("/") + "/health"
    fix = "start `mlflow server` or fix --tracking-uri"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read(64)
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise TrackingServerError(
                f"The MLflow tracking server at {tracking_uri} answered HTTP {err.code}: check its log"
            ) from None
        # A proxy without /health still proves the server is up; MLflow's own calls say more.
        logger.debug("tracking server %s: /health answered HTTP %d", tracking_uri, err.code)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerError(
            f"Cannot reach the MLflow tracking server at {tracking_uri} ({reason}): {fix}"
        ) from None


def job_failure(err: BaseException) -> EdgefleetError | None:
    """Return the one-line error for a lost cluster or tracking server, or None for anything else (a bug)."""
    if isinstance(err, EdgefleetError):
        return err
    if "mlflow" in sys.modules:
        from mlflow.exceptions import MlflowException

        if isinstance(err, MlflowException):
            return TrackingServerError(f"MLflow failed: {_first_line(err.message)}")
    if "pyspark" in sys.modules:
        from pyspark.errors import PySparkRuntimeError
        from pyspark.errors.exceptions.connect import SparkConnectGrpcException

        # Only a lost connection: analysis and UDF errors are bugs and keep their traceback.
        if isinstance(err, SparkConnectGrpcException) and err.getGrpcStatusCode().name in _LOST:
            return ClusterError(f"Lost the Spark Connect server ({_grpc_detail(str(err))}): {_RESTART}")
        if isinstance(err, PySparkRuntimeError) and err.getCondition() == "JAVA_GATEWAY_EXITED":
            return ClusterError(
                "Spark's JVM did not start: check Java 17 is installed (JAVA_HOME) and --master "
                "(local[*], spark://HOST:PORT, or sc://HOST:PORT for Spark Connect)"
            )
    if "grpc" in sys.modules:
        import grpc  # type: ignore[import-untyped]

        if isinstance(err, grpc.RpcError) and getattr(err.code(), "name", None) in _LOST:
            return ClusterError(f"Lost the Spark Connect server ({_grpc_detail(str(err))}): {_RESTART}")
    if "py4j" in sys.modules:
        from py4j.protocol import Py4JNetworkError

        if isinstance(err, Py4JNetworkError):
            return ClusterError(f"Lost Spark's JVM: {_first_line(str(err))}")
    return None


def _grpc_detail(text: str) -> str:
    """Return the `details` of a gRPC error's text (what went wrong), else its first line."""
    match = re.search(r'details = "([^"]*)"', text)
    return match[1] if match else _first_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:400] if lines else "no detail"


class ConnectProgress:
    """A Spark Connect progress handler reporting (done, total) tasks of the running query."""

    def __init__(self, on_progress: Callable[[int, int], None]) -> None:
        self._on_progress = on_progress

    def __call__(self, stages: Iterable[Any] | None, inflight_tasks: int, operation_id: str | None, done: bool) -> None:
        finished = total = 0
        for stage in stages or ():
            finished += stage.num_completed_tasks
            total += stage.num_tasks
        if total:
            self._on_progress(finished, total)
