"""Which registered version holds a bundle: a real MLflow sqlite registry, and `edgefleet bundle registered`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cloud_training.device_training import TrainingConfig
from cloud_training.export import write_bundle
from cloud_training.fleet import train_fleet_locally
from cloud_training.registry import find_registration
from cloud_training.tracking import Tracker
from edgefleet.errors import EdgefleetError
from edgefleet_cli.cli import main
from simulator.history import device_history
from simulator.physics import FEATURES

REGISTERED = "registry-under-test"
HISTORY_END_S = pd.Timestamp("2026-11-01T00:00:00Z").timestamp()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Write a two-device bundle whose manifest names its MLflow run, and register it (version 1, champion)."""
    work = tmp_path_factory.mktemp("registry")
    history = [device_history(f"dev-{i:05d}", 3, 120, HISTORY_END_S, 300.0) for i in range(2)]
    config = TrainingConfig(features=FEATURES, fleet_rows_per_device=60)
    results, fleet = train_fleet_locally(history, config)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "edgefleet", "scalable")
    run_id = tracker.start({"source": "registry test"})
    bundle = work / "bundle"
    write_bundle(bundle, results, fleet, config, mlflow_run_id=run_id)
    tracker.finish({}, results, [], bundle, FEATURES, REGISTERED)
    return {"work": work, "bundle": bundle, "tracking_uri": tracking_uri, "run_id": run_id}


def test_find_registration_returns_the_version_the_run_registered(registered: dict[str, Any]) -> None:
    found = find_registration(registered["tracking_uri"], REGISTERED, registered["run_id"])
    assert found.versions == ("1",)
    assert found.is_champion


def test_find_registration_finds_nothing_for_another_run(registered: dict[str, Any]) -> None:
    found = find_registration(registered["tracking_uri"], REGISTERED, "0" * 32)
    assert found.versions == ()
    assert not found.is_champion


def test_find_registration_refuses_a_sqlite_store_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(EdgefleetError, match="No MLflow store"):
        find_registration(f"sqlite:///{tmp_path / 'none.db'}", REGISTERED, "0" * 32)
    assert not (tmp_path / "none.db").exists()


def test_bundle_registered_prints_the_version_and_the_alias(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bundle", "registered", str(registered["bundle"]), "--tracking-uri", registered["tracking_uri"]]
    assert main([*argv, "--registered-model", REGISTERED]) == 0
    assert f"is {REGISTERED} version 1; it is the champion" in capsys.readouterr().out


def test_bundle_registered_exits_1_when_no_version_holds_the_bundle(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bundle", "registered", str(registered["bundle"]), "--tracking-uri", registered["tracking_uri"]]
    assert main([*argv, "--registered-model", "another-model"]) == 1
    assert "no version of another-model" in capsys.readouterr().err


def test_bundle_registered_exits_2_for_a_bundle_without_an_mlflow_run(
    registered: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = [device_history("dev-00000", 3, 120, HISTORY_END_S, 300.0)]
    config = TrainingConfig(features=FEATURES, fleet_rows_per_device=60)
    results, fleet = train_fleet_locally(history, config)
    write_bundle(tmp_path / "untracked", results, fleet, config)
    argv = ["bundle", "registered", str(tmp_path / "untracked"), "--tracking-uri", registered["tracking_uri"]]
    assert main(argv) == 2
    assert "names no MLflow run" in capsys.readouterr().err
