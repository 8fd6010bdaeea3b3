"""Pick each reading's model and predict many readings per model call.

`Predictor` knows the bundle and the edge-side rules (poor-model threshold, models that failed
to load); it never loads a device model itself: the service loads them on a background thread
(`load`) and asks `ready_model` on the message path, which only looks in the cache. A
`fleet_corrected` device needs nothing loaded: its model is the fleet model (held from the start)
plus its correction from the manifest, one fleet call and one matrix-vector product per group.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefleet.bundle import BundleManifest, BundleReader, CorrectedModel, Route
from edgefleet.messages import Reading

logger = logging.getLogger(__name__)

PredictorMode = Literal["bundle", "naive-sklearn", "passthrough"]

NO_MODEL = "no_model"
POOR_MODEL = "poor_model"
MISSING_FEATURES = "missing_features"
MODEL_ERROR = "model_error"
PASSTHROUGH = "passthrough"
FLEET_ROUTE = Route("fleet", None, NO_MODEL)


def short_float(value: float) -> float:
    """Return `value` rounded to float32 precision, which prints in ~8 digits instead of 17."""
    return float(f"{value:.7g}")


@dataclass(frozen=True, slots=True)
class Choice:
    """The model that serves one reading and why (for the fleet model)."""

    route: Route
    fill: bool = False  # predict on the fleet means where features are missing

    @property
    def key(self) -> str | None:
        return self.route.device_id


class Predictor:
    """Route readings to the device's model, the fleet model or the corrected fleet model; predict in batches."""

    def __init__(
        self,
        bundle_dir: Path,
        *,
        cache_mb: int,
        mode: PredictorMode,
        poor_model_threshold: float,
        manifest: BundleManifest | None = None,
    ) -> None:
        runtime: Literal["joblib", "auto"] = "joblib" if mode == "naive-sklearn" else "auto"
        self.reader = BundleReader(bundle_dir, runtime=runtime, cache_bytes=cache_mb << 20, manifest=manifest)
        self.mode = mode
        self.version = self.reader.manifest.bundle_version
        self.features = self.reader.features
        self._threshold = poor_model_threshold
        self._choices: dict[str, Route] = {}
        self._broken: dict[str, str] = {}
        self._corrected: dict[str, CorrectedModel] = {}  # per fleet_corrected device, on its first reading
        self._lock = threading.Lock()
        # The fleet model serves every fallback: load it now and keep it out of the LRU's reach.
        self._fleet = None if mode == "passthrough" else self.reader.model(FLEET_ROUTE)

    @property
    def poor_model_threshold(self) -> float:
        return self._threshold

    def set_poor_model_threshold(self, threshold: float) -> None:
        """Change the threshold and forget the routes it decided."""
        with self._lock:
            self._threshold = threshold
            self._choices.clear()

    def route(self, device_id: str) -> Route:
        """Return the model that serves `device_id` under the bundle's status and the edge's rules."""
        with self._lock:
            cached = self._choices.get(device_id)
            if cached is not None:
                return cached
            route = self._decide(device_id)
            self._choices[device_id] = route
            return route

    def _decide(self, device_id: str) -> Route:
        if self.mode == "passthrough":
            return Route("fleet", None, PASSTHROUGH)
        if device_id in self._broken:
            return Route("fleet", None, MODEL_ERROR)
        route = self.reader.route(device_id)
        if route.kind != "device":  # the threshold judges device models only: fleet_corrected was chosen in training
            return route
        entry = self.reader.manifest.devices[device_id]
        # The device model must not be more than `threshold` times the fleet model's error on the
        # device's own hold-out (1.0: never use a device model the fleet model beats there).
        holdout, fleet_holdout = entry.holdout, entry.fleet_holdout
        known = holdout is not None and fleet_holdout is not None and fleet_holdout.mse > 0
        if known and holdout.mse > self._threshold * fleet_holdout.mse:  # type: ignore[union-attr]
            return Route("fleet", None, POOR_MODEL)
        return route

    def choose(self, reading: Reading) -> tuple[Choice, list[float]]:
        """Return the model for one reading and its feature row; missing features go to the fleet model."""
        row = reading.feature_values(self.features)
        route = self.route(reading.device_id)
        if self.mode != "passthrough" and any(value != value for value in row):  # NaN: a feature is missing
            return Choice(Route("fleet", None, MISSING_FEATURES), fill=True), row
        return Choice(route), row

    def ready_model(self, route: Route) -> Any | None:
        """Return the route's model if it is loaded (None: ask `load` on another thread)."""
        if route.device_id is None:
            return self._fleet
        if route.kind == "fleet_corrected":
            corrected = self._corrected.get(route.device_id)
            if corrected is None:
                corrected = self._corrected[route.device_id] = self.reader.corrected(self._fleet, route.device_id)
            return corrected
        return self.reader.cached(route)

    def load(self, device_id: str) -> str | None:
        """Load one device's model into the cache; return an error text when it cannot be used."""
        try:
            self.reader.model(Route("device", device_id, None))
            return None
        except Exception as err:  # a tampered or unreadable file: serve the fleet model instead
            self.mark_broken(device_id, str(err))
            return str(err)

    def mark_broken(self, device_id: str, error: str) -> None:
        """Serve `device_id` by the fleet model (`model_error`) for as long as this bundle is open."""
        with self._lock:
            self._broken[device_id] = error
            self._choices.pop(device_id, None)

    def predict(self, model: Any, choice: Choice, rows: Sequence[list[float]]) -> list[float]:
        """Predict feature rows that share one model; values rounded to float32 precision."""
        if self.mode == "passthrough":
            return [0.0] * len(rows)
        x = np.array(rows, dtype=float)
        if choice.fill:
            x = np.where(np.isfinite(x), x, self.reader.fill_values)
        if self.mode == "naive-sklearn":
            # The baseline the issue measures: one scikit-learn call per reading.
            values = [float(model.predict(row.reshape(1, -1))[0]) for row in x]
        else:
            values = model.predict(x).tolist()
        return [short_float(value) for value in values]

    def broken(self) -> dict[str, str]:
        """Return the devices whose model failed to load or was quarantined, with the error."""
        with self._lock:
            return dict(self._broken)
