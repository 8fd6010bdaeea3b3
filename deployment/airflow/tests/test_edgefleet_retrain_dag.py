"""The retraining DAG under Airflow itself: it imports cleanly, its graph and policies, and a real run end to end.

Runs in the Airflow venv (scripts/airflow_dag_test.sh). The end-to-end test builds a tiny world with
the main venv (EDGEFLEET_PYTHON: a registered champion bundle and a lake with one drifted device),
then `airflow dags test` runs every task with the main venv's CLI (EDGEFLEET_CLI) against it.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

DAG_DIR = Path(__file__).resolve().parents[1]
DAG_FILE = DAG_DIR / "edgefleet_retrain_dag.py"
REPO = DAG_DIR.parents[1]
DAG_ID = "edgefleet_retrain"
ORDER = ["retrain", "verify", "register", "deployment_manifest"]
REGISTERED = "edgefleet-airflow-test"


@pytest.fixture(scope="module")
def airflow_home() -> dict[str, str]:
    """Return the environment of the Airflow home the script made: sqlite metadata DB migrated, only our DAG."""
    home = Path(os.environ["AIRFLOW_HOME"])  # a temp dir: scripts/airflow_dag_test.sh
    dags = home / "dags"
    dags.mkdir(exist_ok=True)
    if not (dags / DAG_FILE.name).exists():
        (dags / DAG_FILE.name).symlink_to(DAG_FILE)
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    env["AIRFLOW_BIN"] = airflow
    return env


@pytest.fixture(scope="module")
def dag() -> Any:
    """Return the DAG as Airflow's DagBag parses it, after asserting it parsed without errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def test_dag_parses_without_import_errors_or_cycles(dag: Any) -> None:
    assert dag is not None
    assert [task.task_id for task in dag.topological_sort()] == ORDER


def test_tasks_run_retrain_verify_register_then_manifest_in_a_chain(dag: Any) -> None:
    for upstream, downstream in itertools.pairwise(ORDER):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("retrain").upstream_task_ids == set()


def test_runs_never_overlap_nor_catch_up(dag: Any) -> None:
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def test_retrain_retries_once_and_checks_twice(dag: Any) -> None:
    assert dag.get_task("retrain").retries == 1
    assert all(dag.get_task(task_id).retries == 2 for task_id in ORDER[1:])


def _render(dag: Any, task_id: str, **params: str) -> str:
    defaults = {name: param.value for name, param in dag.params.items()}
    template = dag.get_template_env().from_string(dag.get_task(task_id).bash_command)
    return str(template.render(params={**defaults, **params}))


def test_retrain_runs_under_the_lock_with_every_path_shell_quoted(dag: Any) -> None:
    command = _render(dag, "retrain", lake="/srv/a lake", out="out/next; rm -rf /")
    assert "flock --nonblock --conflict-exit-code 75 out/.retrain.lock .venv/bin/edgefleet retrain" in command
    assert "--lake '/srv/a lake'" in command
    assert "--out 'out/next; rm -rf /' --out-manifest 'out/next; rm -rf /.staged-deployment.json'" in command


def test_manifest_is_published_from_the_staged_copy_retrain_wrote(dag: Any) -> None:
    command = _render(dag, "deployment_manifest")
    assert command.startswith(".venv/bin/edgefleet manifest validate out/bundle-next.staged-deployment.json && cp")
    assert "mv -f -- out/bundle-next.deployment.json.tmp out/bundle-next.deployment.json" in command


def test_dag_file_imports_nothing_of_edgefleet() -> None:
    source = DAG_FILE.read_text()
    for package in ("edgefleet", "cloud_training", "edgefleet_cli"):
        assert f"import {package}" not in source and f"from {package}" not in source


def _command(exit_code: int, tmp_path: Path, **kwargs: Any) -> Any:
    from edgefleet_retrain_dag import EdgefleetCommand  # type: ignore[import-not-found]

    script = f"echo first line; echo last line; exit {exit_code}"
    return EdgefleetCommand(task_id=f"exit_{exit_code}", bash_command=script, cwd=str(tmp_path), **kwargs)


@pytest.fixture
def dag_module_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DAG_DIR))


@pytest.mark.usefixtures("dag_module_on_path")
def test_user_error_exit_fails_the_task_without_retries(tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException, match="exit code 2: last line"):
        _command(2, tmp_path).execute({})


@pytest.mark.usefixtures("dag_module_on_path")
def test_other_failures_stay_retryable(tmp_path: Path) -> None:
    for code in (1, 75):
        with pytest.raises(AirflowException) as raised:
            _command(code, tmp_path).execute({})
        assert not isinstance(raised.value, AirflowFailException)


@pytest.mark.usefixtures("dag_module_on_path")
def test_a_bad_bundle_is_final_for_the_checks(tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException):
        _command(1, tmp_path, final_exit_codes=frozenset({1, 2})).execute({})


@pytest.mark.usefixtures("dag_module_on_path")
def test_success_returns_the_last_output_line(tmp_path: Path) -> None:
    assert _command(0, tmp_path).execute({}) == "last line"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the champion bundle, its registry and the lake with the main venv."""
    python = os.environ.get("EDGEFLEET_PYTHON")
    if not python:
        pytest.fail("set EDGEFLEET_PYTHON to the main venv's python (scripts/airflow_dag_test.sh does)")
    work = tmp_path_factory.mktemp("world")
    done = subprocess.run(
        [python, "-m", "scripts.airflow_dag_world", str(work), "--registered-model", REGISTERED],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    paths: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    paths["work"] = work
    return paths


def _conf(world: dict[str, Any], **overrides: str) -> dict[str, str]:
    """Return the DAG params that point it at the world, with its outputs under the world's out/."""
    out = world["work"] / "out"
    return {
        "repo_dir": str(REPO),
        "edgefleet": os.environ.get("EDGEFLEET_CLI", f"{REPO}/.venv/bin/edgefleet"),
        "lake": world["lake"],
        "bundle": world["bundle"],
        "out": str(out / "bundle-next"),
        "manifest": str(out / "bundle-next.deployment.json"),
        "tracking_uri": world["tracking_uri"],
        "registered_model": REGISTERED,
        "master": "local[2]",
        "lock_file": str(out / ".retrain.lock"),
        **overrides,
    }


def _dags_test(
    airflow_home: dict[str, str], conf: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run the whole DAG once, in-process, with `airflow dags test`."""
    return subprocess.run(
        [airflow_home["AIRFLOW_BIN"], "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
        env=airflow_home,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def dag_run(airflow_home: dict[str, str], world: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run the DAG against the world."""
    return _dags_test(airflow_home, _conf(world), timeout_s=900)


def _expected_bundle_versions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [str(v) for k, v in node.items() if k == "expectedBundleVersion"]
        return found + [x for v in node.values() for x in _expected_bundle_versions(v)]
    if isinstance(node, list):
        return [x for v in node for x in _expected_bundle_versions(v)]
    return []


def test_dag_run_succeeds_end_to_end(dag_run: subprocess.CompletedProcess[str]) -> None:
    log = dag_run.stdout + dag_run.stderr
    assert dag_run.returncode == 0, log[-4000:]
    assert f"is {REGISTERED} version 2; it is the champion" in log  # the register task's line
    assert "published " in log  # the deployment_manifest task's last line


def test_dag_run_leaves_a_bundle_that_verifies(
    dag_run: subprocess.CompletedProcess[str], world: dict[str, Any]
) -> None:
    cli = os.environ.get("EDGEFLEET_CLI", f"{REPO}/.venv/bin/edgefleet")
    bundle = world["work"] / "out" / "bundle-next"
    verified = subprocess.run(f"{cli} bundle verify {bundle}", shell=True, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stderr
    assert "OK: version" in verified.stdout


def test_dag_run_writes_a_bundle_registered_as_the_new_champion(
    dag_run: subprocess.CompletedProcess[str], world: dict[str, Any]
) -> None:
    bundle = world["work"] / "out" / "bundle-next"
    manifest = json.loads((bundle / "manifest.json").read_text())
    db = Path(world["tracking_uri"].removeprefix("sqlite:///"))
    with sqlite3.connect(db) as connection:
        versions = connection.execute(
            "SELECT version FROM model_versions WHERE name = ? AND run_id = ?", (REGISTERED, manifest["mlflow_run_id"])
        ).fetchall()
        alias = connection.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = 'champion'", (REGISTERED,)
        ).fetchone()
    assert versions == [(2,)]  # version 1 is the champion the world registered
    assert alias == (2,)  # the drifted device's challenger won, so the fleet improved


def test_dag_run_publishes_the_manifest_of_the_verified_bundle(
    dag_run: subprocess.CompletedProcess[str], world: dict[str, Any]
) -> None:
    out = world["work"] / "out"
    version = json.loads((out / "bundle-next" / "manifest.json").read_text())["bundle_version"]
    published = json.loads((out / "bundle-next.deployment.json").read_text())
    assert set(_expected_bundle_versions(published)) == {version}
    assert not (out / "bundle-next.deployment.json.tmp").exists()


def test_a_missing_lake_fails_the_run_at_retrain_without_a_retry(
    airflow_home: dict[str, str], world: dict[str, Any]
) -> None:
    work = world["work"] / "missing-lake"
    conf = _conf(world, lake=str(work / "no-lake"), out=str(work / "bundle-next"), manifest=str(work / "m.json"))
    # A retry would wait retrain's 10-minute retry delay and hit the timeout.
    failed = _dags_test(airflow_home, conf, timeout_s=300)
    log = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "DagRun failed" in log
    assert "exit code 2" in log and "(not retried)" in log
    assert not (work / "bundle-next").exists() and not (work / "m.json").exists()
