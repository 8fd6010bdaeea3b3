"""Ship a bundle to Spark's executors inside the job: no shared filesystem, no `SparkContext.addFile`.

The driver reads the bundle. What every task needs (the manifest and the fleet model's files) travels
in the UDF's closure; each device's model files travel as rows of a small frame that is cogrouped with
the device's data, so a task receives exactly the models of the devices it handles. On the executor the
files land in a scratch directory per Python worker, and `BundleReader` opens it there, checking each
file's sha256 as it loads. This works alike on local Spark, a standalone cluster and Spark Connect.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from edgefleet.bundle import MANIFEST_NAME, BundleManifest, BundleReader, Runtime, read_manifest
from edgefleet.errors import BundleError
from edgefleet.history import DEVICE_COLUMN

__all__ = ["MODELS_DDL", "ShippedBundle", "open_shipped", "ship_bundle"]

MODELS_DDL = f"{DEVICE_COLUMN} string, path string, data binary"


@dataclass(frozen=True)
class ShippedBundle:
    """The part of a bundle every task gets in its closure: manifest and fleet files, by path."""

    version: str
    shared: dict[str, bytes]
    runtime: Runtime = "joblib"
    cache_bytes: int = 256 << 20


def ship_bundle(
    spark: SparkSession, bundle_dir: Path, runtime: Runtime = "joblib", cache_bytes: int = 256 << 20
) -> tuple[ShippedBundle, DataFrame]:
    """Return the closure part of the bundle and a frame of each device's model files (device_id, path, data)."""
    manifest = read_manifest(bundle_dir)
    shared = {MANIFEST_NAME: (bundle_dir / MANIFEST_NAME).read_bytes()}
    for model_file in (manifest.fleet.joblib, manifest.fleet.onnx):
        if model_file is not None and _wanted(model_file.path, runtime):
            shared[model_file.path] = _read(bundle_dir, model_file.path)
    rows = [
        (device_id, model_file.path, _read(bundle_dir, model_file.path))
        for device_id, entry in manifest.devices.items()
        for model_file in (entry.joblib, entry.onnx)
        if model_file is not None and _wanted(model_file.path, runtime)
    ]
    files = pd.DataFrame(rows, columns=[DEVICE_COLUMN, "path", "data"])
    return ShippedBundle(manifest.bundle_version, shared, runtime, cache_bytes), spark.createDataFrame(
        files, schema=MODELS_DDL
    )


def _wanted(path: str, runtime: Runtime) -> bool:
    """Return False for files the executors' runtime never opens (ONNX under joblib)."""
    return not (runtime == "joblib" and path.endswith(".onnx"))


def _read(bundle_dir: Path, rel: str) -> bytes:
    try:
        return (bundle_dir / rel).read_bytes()
    except OSError as err:
        raise BundleError(
            f"{bundle_dir / rel}: cannot read ({err.strerror or err}); run `edgefleet bundle verify`"
        ) from err


# Per Python worker: the scratch copy of the bundle it last opened, and its reader.
_OPENED: dict[str, tuple[Path, BundleReader]] = {}


def open_shipped(shipped: ShippedBundle, device_files: pd.DataFrame) -> BundleReader:
    """Return a reader over this worker's copy of the shipped bundle, with `device_files` written into it."""
    opened = _OPENED.get(shipped.version)
    if opened is None:
        for old_root, _ in _OPENED.values():  # a reused worker outlives a job: drop the older bundle
            shutil.rmtree(old_root, ignore_errors=True)
        _OPENED.clear()
        root = Path(tempfile.mkdtemp(prefix="edgefleet-bundle-"))
        for rel, data in shipped.shared.items():
            _place(root, rel, data)
        manifest = BundleManifest.model_validate_json(shipped.shared[MANIFEST_NAME])
        opened = (root, BundleReader(root, runtime=shipped.runtime, cache_bytes=shipped.cache_bytes, manifest=manifest))
        _OPENED[shipped.version] = opened
    root, reader = opened
    for rel, data in zip(device_files["path"], device_files["data"], strict=True):
        _place(root, str(rel), bytes(data))
    return reader


def _place(root: Path, rel: str, data: bytes) -> None:
    """Write one shipped file under `root` (once); its sha256 is checked when the reader loads it."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise BundleError(f"{rel}: path points outside the bundle; refusing it")
    path = root.joinpath(*parts)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
