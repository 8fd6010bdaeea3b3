"""The bundle as an MLflow pyfunc model: route each row by device_id, fall back to the fleet model."""

from __future__ import annotations

import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from cloud_training.predict import predict_frame
from edgefleet.bundle import MANIFEST_NAME, BundleReader
from edgefleet.errors import BundleError

BUNDLE_ARTIFACT = "bundle"
# MLflow 3 nags at class definition when predict() has no type hints; ours is deliberate.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


ARCHIVE_NAME = "bundle.tar"


def pack_bundle(bundle_dir: Path, out_dir: Path) -> Path:
    """Write the bundle directory as one uncompressed tar (models are already compressed)."""
    archive = out_dir / ARCHIVE_NAME
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle_dir, arcname=BUNDLE_ARTIFACT)
    return archive


def unpack_bundle(archive: Path) -> Path:
    """Extract a packed bundle next to the archive (or to a temp dir if that is read-only)."""
    if archive.is_dir():
        return archive
    for parent in (archive.parent, Path(tempfile.mkdtemp(prefix="edgefleet-bundle-"))):
        target = parent / f"{archive.stem}.extracted"
        try:
            if not (target / BUNDLE_ARTIFACT / MANIFEST_NAME).exists():
                with tarfile.open(archive) as tar:
                    tar.extractall(target, filter="data")  # refuses links and paths outside target
            return target / BUNDLE_ARTIFACT
        except PermissionError:
            continue
    raise BundleError(f"{archive}: cannot extract the bundle anywhere writable")


class BundleGateway(PythonModel):
    """Serve a whole fleet bundle as one MLflow model."""

    def load_context(self, context: Any) -> None:
        bundle_dir = unpack_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))
        self._reader = BundleReader(bundle_dir, runtime="joblib")

    # A DataFrame hint is one MLflow infers no schema from (the signature is explicit) and, unlike
    # no hint at all, does not warn about on every import.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        """Predict each row with its device's model from the bundle."""
        frame = pd.DataFrame(model_input)
        return predict_frame(self._reader, frame)["value"].to_numpy()
