"""The edge benchmark's bundles: a small real one (trained here), and a synthetic 10,000-device copy of it."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgefleet.bundle import (
    MANIFEST_NAME,
    MODELS_DIR,
    BundleManifest,
    ModelFile,
    model_file_stem,
    read_manifest,
)
from simulator.physics import FEATURES

DEVICE_FAMILY = "random_forest"  # the naive baseline's per-call cost is then a forest's, as in production


@dataclass(frozen=True)
class BenchBundle:
    """The bundle the module runs use, and which of its devices their own model serves."""

    path: Path
    version: str
    serving: list[str]  # devices routed to their own model (not the fleet fallback)
    family: str
    n_devices: int
    build_s: float


def device_served(manifest: BundleManifest, device_id: str, threshold: float) -> bool:
    """Return whether the inference module routes `device_id` to its own model (its Predictor's rule)."""
    entry = manifest.devices[device_id]
    if entry.status != "trained" or entry.joblib is None:
        return False
    holdout, fleet = entry.holdout, entry.fleet_holdout
    return holdout is None or fleet is None or fleet.mse <= 0 or holdout.mse <= threshold * fleet.mse


def build_bundle(workdir: Path, n_devices: int, rows: int, threshold: float) -> BenchBundle:
    """Train a real bundle in this process (no Spark), with RandomForest device models only."""
    # Training imports (pandas, skl2onnx) cost a second: only this phase needs them.
    import pandas as pd

    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally
    from simulator.history import HistorySpec, generate_history

    started = time.perf_counter()
    spec = HistorySpec(n_devices=n_devices, rows_per_device=rows, seed=7)
    history = generate_history(spec)
    config = TrainingConfig(
        features=FEATURES,
        families=(DEVICE_FAMILY,),
        reference_ts_s=pd.Timestamp(spec.end_ts).timestamp(),
        fleet_rows_per_device=200,
    )
    results, fleet = train_fleet_locally((group for _, group in history.groupby("device_id")), config)
    manifest = write_bundle(workdir / "bundle", results, fleet, config)
    served = sorted(d for d in manifest.devices if device_served(manifest, d, threshold))
    families = Counter(e.family for e in manifest.devices.values() if e.family is not None)
    return BenchBundle(
        path=workdir / "bundle",
        version=manifest.bundle_version,
        serving=served,
        family=", ".join(f"{name} ({count})" for name, count in families.most_common()),
        n_devices=len(manifest.devices),
        build_s=time.perf_counter() - started,
    )


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (instant, no disk space) or, across file systems, copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_synthetic_bundle(source: BenchBundle, out: Path, n_devices: int) -> tuple[Path, str, list[str]]:
    """Replicate one served device's model files under `n_devices` ids, every file pinned in the manifest.

    The copies have the same content, so each entry reuses the original sha256 and size; only
    the paths change. Returns (bundle dir, bundle version, device ids).
    """
    manifest = read_manifest(source.path)
    template = manifest.devices[source.serving[0]]
    if template.joblib is None or template.onnx is None:
        raise RuntimeError(f"device {source.serving[0]} has no ONNX file to replicate")
    (out / MODELS_DIR).mkdir(parents=True)
    for model_file in (manifest.fleet.joblib, manifest.fleet.onnx):
        if model_file is not None:
            link_or_copy(source.path / model_file.path, out / model_file.path)
    devices = {}
    device_ids = [f"syn-{index:05d}" for index in range(n_devices)]
    for device_id in device_ids:
        stem = f"{MODELS_DIR}/{model_file_stem(device_id)}"
        files = {}
        for kind, model_file in (("joblib", template.joblib), ("onnx", template.onnx)):
            path = f"{stem}.{kind}"
            link_or_copy(source.path / model_file.path, out / path)
            files[kind] = ModelFile(path=path, sha256=model_file.sha256, size_bytes=model_file.size_bytes)
        devices[device_id] = template.model_copy(update=files)
    version = f"{manifest.bundle_version}-syn{n_devices}"
    synthetic = manifest.model_copy(update={"devices": devices, "bundle_version": version})
    text = synthetic.to_json()
    BundleManifest.model_validate_json(text)  # model_copy skips validation; the module will not
    (out / MANIFEST_NAME).write_text(text)
    return out, version, device_ids
