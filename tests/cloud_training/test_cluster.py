"""Train, score and retrain on real clusters: a standalone master + worker and a Spark Connect server, both
started from the pyspark package on loopback, tracked by a real `mlflow server` over HTTP.

The driver (the CLI) and the cluster share nothing but the history and lake paths: bundles travel inside
the jobs. Each cluster's bundles must predict exactly what a local[2] run's bundles predict.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgefleet.bundle import BundleReader, verify_bundle
from edgefleet.history import write_history
from edgefleet.lake import append_to_lake
from tests.cloud_training.test_retrain import lake_rows
from tests.conftest import fleet_history
from tests.edge_fixtures import REPO

pyspark = pytest.importorskip("pyspark")

# Minutes of cluster start-up: `make cluster-test` runs these, apart from `make test` (.ci/run runs both).
pytestmark = pytest.mark.cluster

SPARK_HOME = Path(pyspark.__file__).resolve().parent
LOOPBACK = "127.0.0.1"
NOW = pd.Timestamp.now(tz="UTC").floor("min")
DRIFTED = ("dev-00001",)
TEMPLATE = REPO / "deployment" / "deployment.template.json"
START_TIMEOUT_S = 90.0


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def cluster_env(**extra: str) -> dict[str, str]:
    """Return the environment of every process here: loopback only, this interpreter, this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARK_", "PYSPARK_"))}
    return {
        **env,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": LOOPBACK,
        "PYSPARK_PYTHON": sys.executable,
        # Executors import the UDFs' modules (cloud_training, edgefleet): the same code as the driver.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        **extra,
    }


class Service:
    """A server process in its own process group, logging to a file; stopped with its children."""

    def __init__(self, name: str, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True
            )

    def wait_until(self, ready: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll `ready` until it holds; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the whole process group: TERM, then KILL after 15 s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass


def listening(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def services() -> Iterator[list[Service]]:
    """Collect the module's servers and stop each at teardown, whatever happened."""
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
def mlflow_server(services: list[Service], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start `mlflow server` on loopback with a sqlite store and an artifact store it serves over HTTP."""
    work = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--artifacts-destination",
        str(work / "artifacts"),
        "--serve-artifacts",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = Service("mlflow server", command, work / "mlflow.log", cluster_env())
    services.append(server)
    uri = f"http://{LOOPBACK}:{port}"
    server.wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200)
    return uri


@pytest.fixture(scope="module")
def standalone(services: list[Service], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start a standalone master and one worker (2 cores, 1 GB) from the pyspark package; return the master URL."""
    work = tmp_path_factory.mktemp("standalone")
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    ui = ["--webui-port", str(ui_port)]
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    env = cluster_env(SPARK_WORKER_DIR=str(work / "worker"), SPARK_LOG_DIR=str(work))
    master = Service(
        "spark master",
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port), *ui],
        work / "master.log",
        env,
    )
    services.append(master)
    master.wait_until(lambda: listening(port))
    url = f"spark://{LOOPBACK}:{port}"
    resources = ["--memory", "1g", "--webui-port", str(worker_ui), "--work-dir", str(work / "worker")]
    worker = Service(
        "spark worker",
        [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK, "--cores", "2", *resources, url],
        work / "worker.log",
        env,
    )
    services.append(worker)
    master.wait_until(lambda: http_json(f"http://{LOOPBACK}:{ui_port}/json/")["aliveworkers"] >= 1)
    return url


@pytest.fixture(scope="module")
def connect_server(services: list[Service], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start a Spark Connect server (local[2]) on loopback from the pyspark package; return its sc:// URL."""
    work = tmp_path_factory.mktemp("connect")
    port = free_port()
    command = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master",
        "local[2]",
        "--conf",
        f"spark.connect.grpc.binding.address={LOOPBACK}",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        f"spark.local.dir={work}",
        "spark-internal",
    ]
    server = Service("spark connect server", command, work / "connect.log", cluster_env())
    services.append(server)
    server.wait_until(lambda: listening(port))
    return f"sc://{LOOPBACK}:{port}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write the training history (with faulty devices), the rows to score, and a lake where two devices drifted."""
    work = tmp_path_factory.mktemp("cluster-data")
    history = fleet_history(3, 150, seed=3)
    healthy = history[history["device_id"].str.startswith("dev-")]
    rng = np.random.default_rng(5)
    lake = work / "lake"
    devices = sorted(healthy["device_id"].unique())
    append_to_lake(lake, pd.concat([lake_rows(d, 120, NOW, d in DRIFTED, rng) for d in devices], ignore_index=True))
    return {
        "history": write_history(history, work / "history.parquet"),
        # Every device, the faulty ones' 1e39 sentinels included: scoring treats them as missing values.
        "score_input": write_history(history, work / "score.parquet"),
        "lake": lake,
    }


def edgefleet(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a fresh process with the cluster environment."""
    return subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=240,
        env=cluster_env(),
    )


def run_loop(master: str, tracking_uri: str, data: dict[str, Path], work: Path, run: Callable[..., Any]) -> Loop:
    """Run train -> score -> retrain on `master` through `run`; return where they wrote and how long each took."""
    work.mkdir(parents=True, exist_ok=True)
    loop = Loop(work)
    common = ["--master", master, "--tracking-uri", tracking_uri, "--experiment", "cluster", "--quiet"]
    common += ["--families", "ridge,random_forest"]  # seeded randomness too; gradient boosting only adds time
    scored = ["--out", loop.scored]
    retrained = ["--out", loop.next_bundle, "--template", TEMPLATE]
    steps = {
        "train": ["train", "--history", data["history"], "--out", loop.bundle, *common],
        "score": ["score", "--master", master, "--history", data["score_input"], "--bundle", loop.bundle, *scored],
        "retrain": ["retrain", "--lake", data["lake"], "--bundle", loop.bundle, "--since", "24h", *retrained, *common],
    }
    for name, args in steps.items():
        started = time.perf_counter()
        run(name, master, *args, cwd=work)
        loop.times_s[name] = round(time.perf_counter() - started, 1)
    return loop


class Loop:
    """Where one train -> score -> retrain loop wrote, and its wall times."""

    def __init__(self, work: Path) -> None:
        self.bundle = work / "bundle"
        self.scored = work / "scored"
        self.next_bundle = work / "bundle-next"
        self.times_s: dict[str, float] = {}

    def predictions(self) -> pd.DataFrame:
        scored = pd.read_parquet(self.scored)
        columns = ["device_id", "ts", "prediction", "prediction_model", "prediction_fallback_reason"]
        return scored[columns].sort_values(["device_id", "ts"], ignore_index=True)


def in_subprocess(name: str, master: str, *args: object, cwd: Path) -> None:
    """Run one CLI step in a fresh process with the cluster environment, as a user would."""
    run = edgefleet(*args, cwd=cwd)
    assert run.returncode == 0, f"{name} on {master} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"


def in_process(name: str, master: str, *args: object, cwd: Path) -> None:
    """Run one CLI step in this process: local[2] joins the tests' Spark session."""
    from edgefleet_cli.cli import main

    assert main([str(a) for a in args]) == 0, f"{name} on {master} failed"


def bundle_predictions(bundle: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Return what the bundle predicts for each row, read straight from its files."""
    from cloud_training.predict import predict_frame

    return predict_frame(BundleReader(bundle, runtime="joblib"), frame)


@pytest.fixture(scope="module")
def local_loop(spark: object, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Loop:
    """The reference: the same loop on the tests' local[2] session, tracked in a sqlite store."""
    work = tmp_path_factory.mktemp("local-loop")
    return run_loop("local[2]", f"sqlite:///{work / 'mlflow.db'}", data, work, in_process)


def check_like_local(loop: Loop, local: Loop, tracking_uri: str, data: dict[str, Path]) -> None:
    """Assert the loop's bundles verify, predict exactly as local Spark's, and their MLflow runs finished."""
    from mlflow.tracking import MlflowClient

    assert verify_bundle(loop.bundle) == [] and verify_bundle(loop.next_bundle) == []
    pd.testing.assert_frame_equal(loop.predictions(), local.predictions())
    rows = pd.read_parquet(data["score_input"])
    for bundle, reference in ((loop.bundle, local.bundle), (loop.next_bundle, local.next_bundle)):
        pd.testing.assert_frame_equal(bundle_predictions(bundle, rows), bundle_predictions(reference, rows))
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("cluster")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    artifacts = client.list_artifacts(runs[0].info.run_id)  # uploaded over HTTP to the server's artifact store
    assert artifacts


def test_standalone_cluster_trains_scores_and_retrains_exactly_like_local_spark(
    standalone: str, mlflow_server: str, data: dict[str, Path], local_loop: Loop, tmp_path: Path
) -> None:
    loop = run_loop(standalone, mlflow_server, data, tmp_path, in_subprocess)
    print(f"standalone: {loop.times_s}; local: {local_loop.times_s}")
    check_like_local(loop, local_loop, mlflow_server, data)


def test_spark_connect_trains_scores_and_retrains_exactly_like_local_spark(
    connect_server: str, mlflow_server: str, data: dict[str, Path], local_loop: Loop, tmp_path: Path
) -> None:
    loop = run_loop(connect_server, mlflow_server, data, tmp_path, in_subprocess)
    print(f"connect: {loop.times_s}")
    check_like_local(loop, local_loop, mlflow_server, data)


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    """Return the run's one error line, after asserting it exited 2 with no traceback.

    (MLflow's import-time nag about `predict` type hints may precede it: MLflow re-enables it itself.)
    """
    errors = [line for line in run.stderr.splitlines() if line.startswith("edgefleet: error: ")]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    return errors[0]


def assert_nothing_written(work: Path) -> None:
    """Assert no bundle, staging or scratch directory is left behind."""
    assert sorted(p.name for p in work.iterdir()) == [], sorted(p.name for p in work.iterdir())


@pytest.mark.parametrize(
    ("command", "scheme", "expected"),
    [
        ("train", "spark", "Cannot reach the Spark master at 127.0.0.1:"),
        ("train", "sc", "Cannot reach the Spark Connect server at 127.0.0.1:"),
        ("score", "sc", "Cannot reach the Spark Connect server at 127.0.0.1:"),
        ("retrain", "spark", "Cannot reach the Spark master at 127.0.0.1:"),
    ],
)
def test_an_unreachable_master_fails_within_seconds_in_one_line_leaving_no_bundle(
    command: str, scheme: str, expected: str, data: dict[str, Path], small_bundle: Path, tmp_path: Path
) -> None:
    master = f"{scheme}://{LOOPBACK}:{free_port()}"  # nothing listens there
    work = tmp_path / "work"
    work.mkdir()
    out = work / "bundle"
    no_tracking = ["--template", TEMPLATE, "--tracking", "off"]
    args = {
        "train": ["--history", data["history"], "--out", out, "--tracking", "off"],
        "score": ["--history", data["score_input"], "--bundle", small_bundle, "--out", out],
        "retrain": ["--lake", data["lake"], "--bundle", small_bundle, "--since", "24h", "--out", out, *no_tracking],
    }[command]
    started = time.perf_counter()
    run = edgefleet(command, "--master", master, *args, cwd=work)
    assert expected in one_error_line(run) and "--master" in run.stderr
    assert time.perf_counter() - started < 30
    assert_nothing_written(work)


def test_a_tracking_server_that_is_down_fails_in_one_line_before_spark_starts(data: dict[str, Path], tmp_path: Path):
    uri = f"http://{LOOPBACK}:{free_port()}"
    run = edgefleet(
        "train", "--history", data["history"], "--out", tmp_path / "bundle", "--tracking-uri", uri, cwd=tmp_path
    )
    assert f"Cannot reach the MLflow tracking server at {uri}" in one_error_line(run)
    assert_nothing_written(tmp_path)


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(503, "store unavailable")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_a_tracking_server_answering_5xx_fails_in_one_line(data: dict[str, Path], tmp_path: Path) -> None:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://{LOOPBACK}:{server.server_address[1]}"
    try:
        run = edgefleet(
            "train", "--history", data["history"], "--out", tmp_path / "bundle", "--tracking-uri", uri, cwd=tmp_path
        )
    finally:
        server.shutdown()
        server.server_close()
    assert f"The MLflow tracking server at {uri} answered HTTP 503" in one_error_line(run)
    assert_nothing_written(tmp_path)


def test_a_run_that_fails_after_it_started_is_marked_failed_on_the_server(
    spark: object, mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from cloud_training.pipeline import run_training
    from cloud_training.settings import TrainSettings
    from edgefleet.errors import EdgefleetError

    rows = fleet_history(1, 30).assign(device_id=None)  # readable, but no device to train
    history = write_history(rows, tmp_path / "history.parquet")
    settings = TrainSettings(
        history=history, out=tmp_path / "bundle", tracking_uri=mlflow_server, experiment="cluster-failures"
    )
    with pytest.raises(EdgefleetError, match="no rows with a device_id"):
        run_training(settings)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("cluster-failures")
    assert experiment is not None
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FAILED"]
    assert not (tmp_path / "bundle").exists()
