"""Write the training results as a model bundle (the bundle contract of `edgefleet.bundle`)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from cloud_training.correction import correction_from_json
from cloud_training.device_training import TrainingConfig
from cloud_training.fleet import FleetModel
from edgefleet.bundle import (
    MANIFEST_NAME,
    MODELS_DIR,
    BundleManifest,
    Correction,
    DeviceEntry,
    FleetEntry,
    HoldoutMetrics,
    ModelFile,
    model_file_stem,
    sha256_bytes,
)
from edgefleet.errors import BundleError
from edgefleet.messages import ModelKind

logger = logging.getLogger(__name__)

_LIBRARIES = ("scikit-learn", "joblib", "numpy", "onnx", "skl2onnx", "onnxruntime")


def library_versions() -> dict[str, str]:
    """Return the versions the models were built with (the edge must match scikit-learn's)."""
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _write(root: Path, rel: str, data: bytes) -> ModelFile:
    (root / rel).write_bytes(data)
    return ModelFile(path=rel, sha256=sha256_bytes(data), size_bytes=len(data))


def _metrics(mse: Any, mae: Any, r2: Any, n: Any) -> HoldoutMetrics | None:
    if mse is None or pd.isna(mse):
        return None
    return HoldoutMetrics(mse=float(mse), mae=float(mae), r2=float(r2), n=int(n))


def _optional_str(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def pooled_fleet_holdout(results: pd.DataFrame) -> HoldoutMetrics | None:
    """Return the fleet model's error over all devices' hold-outs, weighted by rows."""
    scored = results[results["fleet_mse"].notna() & (results["n_holdout"] > 0)]
    if scored.empty:
        return None
    n = scored["n_holdout"].astype(float)
    total = float(n.sum())
    return HoldoutMetrics(
        mse=float((scored["fleet_mse"] * n).sum() / total),
        mae=float((scored["fleet_mae"] * n).sum() / total),
        r2=float((scored["fleet_r2"] * n).sum() / total),
        n=int(total),
    )


def write_bundle(
    out_dir: Path,
    results: pd.DataFrame,
    fleet: FleetModel,
    config: TrainingConfig,
    mlflow_run_id: str | None = None,
    device_run_ids: dict[str, str] | None = None,
) -> BundleManifest:
    """Write the bundle to `out_dir` atomically (staging dir, then rename) and return its manifest."""
    with staged_bundle_dir(out_dir) as staging:
        manifest = _write_contents(staging, results, fleet, config, mlflow_run_id, device_run_ids or {})
    return manifest


@contextmanager
def staged_bundle_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging dir (with `models/`) beside `out_dir`; swap it into place if the block succeeds."""
    if out_dir.exists() and not (out_dir / MANIFEST_NAME).exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} exists and is not a bundle; choose an empty or new --out directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    (staging / MODELS_DIR).mkdir(parents=True)
    try:
        yield staging
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_device_entry(root: Path, row: dict[str, Any], mlflow_run_id: str | None = None) -> DeviceEntry:
    """Write one result row's model files under `root` and return its manifest entry."""
    stem = f"{MODELS_DIR}/{model_file_stem(str(row['device_id']))}"
    joblib_file = onnx_file = None
    if row["joblib_blob"] is not None:
        joblib_file = _write(root, stem + ".joblib", row["joblib_blob"])
        if row["onnx_blob"] is not None:
            onnx_file = _write(root, stem + ".onnx", row["onnx_blob"])
    kind = served_kind(row)
    return DeviceEntry(
        status=row["status"],
        kind=kind,
        correction=_correction(row.get("correction")) if kind == "fleet_corrected" else None,
        reason=_optional_str(row["reason"]),
        detail=_optional_str(row["detail"]),
        family=_optional_str(row["family"]),
        joblib=joblib_file,
        onnx=onnx_file,
        n_train=int(row["n_train"]),
        n_holdout=int(row["n_holdout"]),
        holdout=_metrics(row["mse"], row["mae"], row["r2"], row["n_holdout"]),
        fleet_holdout=_metrics(row["fleet_mse"], row["fleet_mae"], row["fleet_r2"], row["n_holdout"]),
        predict_us=_optional_float(row["predict_us"]),
        mlflow_run_id=mlflow_run_id,
        feature_reference=_feature_reference(row.get("feature_reference")),
    )


def served_kind(row: Mapping[str, Any]) -> ModelKind:
    """Return what serves a result row's device: `trained` rows their chosen kind, every other status the fleet."""
    if row["status"] != "trained":
        return "fleet"
    kind = _optional_str(row.get("kind"))
    if kind == "fleet_corrected" and isinstance(row.get("correction"), str):
        return "fleet_corrected"
    return "device" if row.get("joblib_blob") is not None else "fleet"


def _correction(text: Any) -> Correction | None:
    return correction_from_json(text) if isinstance(text, str) else None


def _feature_reference(text: Any) -> dict[str, str] | None:
    """Return a result row's feature references, feature by feature (None when training stored none)."""
    if not isinstance(text, str):
        return None
    references = json.loads(text)
    return {str(name): str(reference) for name, reference in references.items()}


def content_version(created: datetime, fleet: FleetEntry, devices: Mapping[str, DeviceEntry]) -> str:
    """Return `<UTC time>-<hash of the fleet's and each device's model sha256, in device order>`."""
    content = hashlib.sha256(fleet.joblib.sha256.encode())
    for device_id in sorted(devices):
        joblib_file = devices[device_id].joblib
        if joblib_file is not None:
            content.update(joblib_file.sha256.encode())
        correction = devices[device_id].correction
        if correction is not None:  # a corrected device's model is the fleet file plus these numbers
            content.update(device_id.encode() + correction.model_dump_json().encode())
    return f"{created:%Y%m%dT%H%M%SZ}-{content.hexdigest()[:8]}"


def _write_contents(
    root: Path,
    results: pd.DataFrame,
    fleet: FleetModel,
    config: TrainingConfig,
    mlflow_run_id: str | None,
    device_run_ids: dict[str, str],
) -> BundleManifest:
    fleet_entry = FleetEntry(
        family=fleet.family,
        joblib=_write(root, "fleet.joblib", fleet.joblib_blob),
        onnx=_write(root, "fleet.onnx", fleet.onnx_blob) if fleet.onnx_blob is not None else None,
        n_train=fleet.n_train,
        holdout=pooled_fleet_holdout(results),
    )
    rows: list[dict[str, Any]] = results.sort_values("device_id").to_dict("records")  # type: ignore[assignment]
    devices = {
        str(row["device_id"]): write_device_entry(root, row, device_run_ids.get(str(row["device_id"]))) for row in rows
    }
    created = datetime.now(UTC)
    manifest = BundleManifest(
        bundle_version=content_version(created, fleet_entry, devices),
        created_at=created.isoformat(timespec="seconds"),
        features=config.features,
        target=config.target,
        libraries=library_versions(),
        feature_stats=fleet.feature_stats,
        fleet=fleet_entry,
        devices=devices,
        mlflow_run_id=mlflow_run_id,
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
