"""The CLI as a user runs it: a real subprocess, exit codes, and messages instead of tracebacks."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from edgefleet.bundle import BundleReader, read_manifest
from tests.edge_fixtures import REPO


def clean_env(**extra):
    """Return the environment a user's shell would have: no MLflow URI set by in-process tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARK_MASTER"))}
    return {**env, **extra}


def edgefleet(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=clean_env(),
    )


def test_generate_history_writes_the_requested_fleet(tmp_path):
    run = edgefleet("generate-history", "--devices", 7, "--rows", 30, "--seed", 1, "--out", tmp_path / "h.parquet")
    assert run.returncode == 0, run.stderr
    frame = pd.read_parquet(tmp_path / "h.parquet")
    assert frame["device_id"].nunique() == 7 and len(frame) == 210


def test_bundle_verify_exits_nonzero_naming_the_tampered_file(small_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(small_bundle, bundle)
    assert edgefleet("bundle", "verify", bundle).returncode == 0
    victim = read_manifest(bundle).fleet.onnx.path
    (bundle / victim).write_bytes(b"tampered")
    run = edgefleet("bundle", "verify", bundle)
    assert run.returncode == 1
    assert f"BAD {victim}" in run.stderr and "do not deploy" in run.stderr


def test_bundle_inspect_summarises_status_counts(small_bundle):
    run = edgefleet("bundle", "inspect", small_bundle, "--json")
    assert run.returncode == 0, run.stderr
    assert '"skipped"' in run.stdout and '"fallback": 1' in run.stdout


def test_train_on_a_missing_file_says_so_without_a_traceback(tmp_path):
    run = edgefleet("train", "--history", tmp_path / "nope.parquet", "--tracking", "off", cwd=tmp_path)
    assert run.returncode == 2
    assert "History not found" in run.stderr and "Traceback" not in run.stderr


def test_train_with_an_unknown_family_says_which_exist(tmp_path):
    run = edgefleet("train", "--history", "h.parquet", "--families", "xgboost", cwd=tmp_path)
    assert run.returncode == 2
    assert "use some of: ridge, random_forest, gradient_boosting" in run.stderr and "Traceback" not in run.stderr


def test_bundle_verify_on_a_directory_that_is_not_a_bundle(tmp_path):
    run = edgefleet("bundle", "verify", tmp_path)
    assert run.returncode == 1 and "not an edgefleet bundle" in run.stderr


def test_train_from_the_cli_prints_a_summary_and_leaves_no_temp_files(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    assert edgefleet("generate-history", "--devices", 6, "--rows", 80, "--out", tmp_path / "h.parquet").returncode == 0
    run = subprocess.run(
        [
            sys.executable, "-m", "edgefleet_cli", "train", "--history", "h.parquet", "--master", "local[2]",
            "--execution", "spark", "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=clean_env(TMPDIR=str(scratch)),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("execution: Spark (--execution spark on local[2])\n")
    assert "Training summary: 6 devices" in run.stdout and "alias champion" in run.stdout
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "out" / "bundle" / "manifest.json").exists()
    assert list(scratch.iterdir()) == []  # Spark scratch and worker temp files are removed


def test_train_picks_in_process_for_a_small_fleet_says_so_and_records_it(tmp_path):
    assert edgefleet("generate-history", "--devices", 5, "--rows", 80, "--out", tmp_path / "h.parquet").returncode == 0
    run = edgefleet("train", "--history", "h.parquet", "--quiet", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    first = run.stdout.splitlines()[0]  # one line, however narrow the terminal
    assert re.match(
        r"execution: in-process \(5 devices x 80 rows x \d+ columns need ~0\.0 GB of the [\d.]+ GB available", first
    )
    assert first.endswith("; --execution spark to force Spark)")
    assert "java" not in run.stderr.lower()  # no JVM started
    document = json.loads(run.stdout.splitlines()[-1])
    assert document["summary"]["execution"]["chosen"] == "in_process" and document["timings_s"]["jvm_start_s"] == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = read_manifest(tmp_path / "out" / "bundle").mlflow_run_id
    assert client.get_run(run_id).data.params["execution_chosen"] == "in_process"


def test_train_keeps_the_cluster_master_it_was_given_even_for_a_small_fleet(tmp_path):
    assert edgefleet("generate-history", "--devices", 2, "--rows", 40, "--out", tmp_path / "h.parquet").returncode == 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed when the block ends: nothing listens there
    run = edgefleet("train", "--history", "h.parquet", "--master", f"spark://127.0.0.1:{port}", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"execution: Spark (--master spark://127.0.0.1:{port} names a cluster" in run.stdout
    assert "Cannot reach the Spark master" in run.stderr  # it went to the cluster, not in-process


def test_score_from_the_cli_writes_predictions_with_their_model_and_fallback_reason(small_bundle, tmp_path):
    assert edgefleet("generate-history", "--devices", 3, "--rows", 20, "--out", tmp_path / "h.parquet").returncode == 0
    run = edgefleet(
        "score", "--history", tmp_path / "h.parquet", "--bundle", small_bundle, "--out", tmp_path / "scored",
        "--master", "local[2]",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "scored 60 rows" in run.stdout
    scored = pd.read_parquet(tmp_path / "scored")
    assert len(scored) == 60 and scored["prediction"].notna().all()
    routes = BundleReader(small_bundle).route
    for device_id, rows in scored.groupby("device_id"):
        route = routes(str(device_id))
        assert set(rows["prediction_model"]) == {route.kind}
        assert set(rows["prediction_fallback_reason"].fillna("none")) == {route.fallback_reason or "none"}
    assert "device" in set(scored["prediction_model"])


def test_up_runs_the_whole_edge_until_sigterm_and_leaves_predictions_in_the_lake(small_bundle, tmp_path):
    import json
    import signal
    import time

    from edgefleet_cli.field_secrets import client_password_file
    from edgefleet_cli.local_edge import FieldEndpoint, free_port
    from field_broker.identities import GATEWAY_USER
    from tests.edge_fixtures import field_client, next_ip_base, reading, wait_for

    port, dashboard_port = free_port(), free_port()
    repo = str(REPO)
    args = ["up", "--bundle", small_bundle, "--workdir", tmp_path / "edge", "--lake", tmp_path / "lake"]
    args += ["--ip-base", next_ip_base(), "--field-port", port, "--dashboard-port", dashboard_port]
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=repo,
        env=clean_env(),
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("edge running"), banner + process.stdout.read()
        device = next(d for d, e in read_manifest(small_bundle).devices.items() if e.kind == "device")
        secrets = tmp_path / "edge" / "field-secrets"
        gateway = FieldEndpoint(
            "127.0.0.1", port, secrets / "ca.pem", GATEWAY_USER, client_password_file(secrets, GATEWAY_USER)
        )
        client = field_client(gateway, "cli-test")
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(f"fleet/{device}/telemetry", json.dumps(reading(device, 1)), qos=1).wait_for_publish()
        client.disconnect()
        client.loop_stop()
        time.sleep(1.5)  # the reading travels through both modules before we stop
        # the live dashboard serves its page while the edge runs
        import urllib.request

        def dashboard_page() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=5) as response:
                    return response.read().decode() if response.status == 200 else None
            except OSError:
                return None

        assert "bokeh" in wait_for(dashboard_page, timeout_s=30).lower()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=90)[0]
    assert process.returncode == 0, output
    files = wait_for(lambda: list((tmp_path / "lake").glob("date=*/*.parquet")), timeout_s=5)
    rows = pd.concat(pd.read_parquet(path) for path in files)
    predicted = rows[rows["source_module"] == "inference"]
    assert list(predicted["device_id"]) == [device]
    assert predicted.iloc[0]["prediction_model"] == "device"

    # Nothing of this edge is left running: no broker, no module process names its work dir.
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in text or f"--port {dashboard_port}" in text:
            leftovers.append(text)
    assert leftovers == []


def test_up_with_the_simulator_stops_by_itself_and_fills_the_lake_with_predictions(small_bundle, tmp_path):
    from edgefleet_cli.local_edge import free_port
    from tests.edge_fixtures import next_ip_base

    profile = tmp_path / "fleet.yaml"
    profile.write_text(
        "seed: 11\nduration_s: 4\ndevice_types:\n  - {name: pump, count: 6, id_prefix: dev-, rate_per_s: 5}\n"
        "faults: {nan_rate: 0.05, duplicate_rate: 0.05}\n"
    )
    args = ["up", "--bundle", small_bundle, "--simulate", profile, "--duration-s", 4]
    args += ["--workdir", tmp_path / "edge", "--lake", tmp_path / "lake"]
    args += ["--ip-base", next_ip_base(), "--field-port", free_port(), "--no-dashboard"]
    repo = str(REPO)
    run = subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=repo,
        env=clean_env(),
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    files = list((tmp_path / "lake").glob("date=*/*.parquet"))
    # The lake rolls its files as the sink service does: one per day partition for a short run, not one per flush.
    assert len(files) == len({path.parent for path in files}), files
    rows = pd.concat(pd.read_parquet(path) for path in files)
    predicted = rows[rows["source_module"] == "inference"].drop_duplicates(["device_id", "seq"])
    assert len(predicted) >= 100
    assert set(predicted["device_id"]) <= {f"dev-{i:05d}" for i in range(6)}
