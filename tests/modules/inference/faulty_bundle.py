"""A tiny bundle whose models fail the ways real ones do: inf on a sentinel input, wrong feature count, raising."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge

from cloud_training.device_training import to_onnx_bytes
from edgefleet.bundle import (
    BundleManifest,
    DeviceEntry,
    FeatureStats,
    FleetEntry,
    HoldoutMetrics,
    ModelFile,
    sha256_bytes,
)

__all__ = ["DEVICE_VALUE", "FEATURES", "FLEET_VALUE", "HUGE", "RaisesOnHugeInput", "write_faulty_bundle"]

FEATURES = ("temperature_c", "humidity_pct")
DEVICE_VALUE = 100.0  # what the healthy device models predict
FLEET_VALUE = 7.0  # what a healthy fleet model predicts
HUGE = 1e39  # a sensor's FLT_MAX sentinel: finite as a double, inf once a float32 model reads it


class RaisesOnHugeInput:
    """A model that answers a constant but raises on any input over 1e30 (as some libraries validate)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, x: np.ndarray) -> np.ndarray:
        if (np.abs(x) > 1e30).any():
            raise ValueError("input out of range")
        return np.full(len(x), self.value)


def _write(folder: Path, rel: str, data: bytes) -> ModelFile:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(data)
    return ModelFile(path=rel, sha256=sha256_bytes(data), size_bytes=len(data))


def _joblib(folder: Path, rel: str, model: Any) -> ModelFile:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return _write(folder, rel, buffer.getvalue())


def _constant(value: float) -> DummyRegressor:
    return DummyRegressor(strategy="constant", constant=value).fit([[0.0, 0.0]], [value])


def _ridge(n_features: int) -> Ridge:
    """A linear model of temperature; fitted on `n_features` columns (2 is the bundle's count)."""
    x = np.array([[10.0, 40.0, 1.0], [20.0, 40.0, 2.0], [30.0, 50.0, 3.0]])[:, :n_features]
    return Ridge(alpha=1.0).fit(x, [20.0, 40.0, 60.0])


def _holdout(mse: float) -> HoldoutMetrics:
    return HoldoutMetrics(mse=mse, mae=mse, r2=0.5, n=50)


def _device(folder: Path, device_id: str, model: Any, onnx: bytes | None = None) -> DeviceEntry:
    return DeviceEntry(
        status="trained",
        family="test",
        n_train=100,
        n_holdout=50,
        joblib=_joblib(folder, f"models/{device_id}.joblib", model),
        onnx=_write(folder, f"models/{device_id}.onnx", onnx) if onnx is not None else None,
        holdout=_holdout(1.0),
        fleet_holdout=_holdout(2.0),
    )


def write_faulty_bundle(folder: Path, version: str = "v1", *, fleet_fails: bool = False) -> Path:
    """Write a bundle of healthy devices (`dev-a`, `dev-b`) beside faulty ones.

    `dev-linear`: a Ridge served by ONNX (float32), which predicts inf for `HUGE`;
    `dev-broken`: a valid file whose model expects 3 features, so every predict raises;
    `dev-picky`: raises for a whole call when one row holds `HUGE`, answers otherwise.
    With `fleet_fails` the fleet model expects 3 features too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    linear = _ridge(2)
    devices = {
        "dev-a": _device(folder, "dev-a", _constant(DEVICE_VALUE)),
        "dev-b": _device(folder, "dev-b", _constant(DEVICE_VALUE)),
        "dev-linear": _device(folder, "dev-linear", linear, onnx=to_onnx_bytes(linear, len(FEATURES))),
        "dev-broken": _device(folder, "dev-broken", _ridge(3)),
        "dev-picky": _device(folder, "dev-picky", RaisesOnHugeInput(DEVICE_VALUE)),
    }
    fleet_model = _ridge(3) if fleet_fails else _constant(FLEET_VALUE)
    manifest = BundleManifest(
        bundle_version=version,
        created_at="2026-11-21T00:00:00Z",
        features=FEATURES,
        target="energy_kwh",
        libraries={},
        feature_stats={name: FeatureStats(mean=20.0, std=5.0, p01=5.0, p99=35.0) for name in FEATURES},
        fleet=FleetEntry(family="test", joblib=_joblib(folder, "fleet.joblib", fleet_model), n_train=300),
        devices=devices,
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder
