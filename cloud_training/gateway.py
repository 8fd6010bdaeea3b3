"""The bundle as an MLflow pyfunc model: route each row by device_id, fall back to the fleet model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from cloud_training.predict import predict_frame
from edgefleet.bundle import BundleReader

BUNDLE_ARTIFACT = "bundle"
# MLflow 3 nags at class definition when predict() has no type hints; ours is deliberate.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)


class BundleGateway(PythonModel):
    """Serve a whole fleet bundle as one MLflow model."""

    def load_context(self, context: Any) -> None:
        self._reader = BundleReader(Path(context.artifacts[BUNDLE_ARTIFACT]), runtime="joblib")

    # No type hints on the inputs: MLflow 3 would read them as a schema; the signature is explicit.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = pd.DataFrame(model_input)
        return predict_frame(self._reader, frame)["value"].to_numpy()
