"""The bundle as the inference module serves it: verified before it is opened, with its drift monitor."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping

from edgefleet.bundle import DeviceEntry, read_manifest, verify_bundle
from edgefleet.errors import BundleError
from edgefleet.feature_reference import FeatureReference
from modules.inference.drift import FLEET_KEY, DriftMonitor, DriftSettings
from modules.inference.predictor import Predictor
from modules.inference.settings import InferenceSettings

logger = logging.getLogger(__name__)

__all__ = ["BundleReferences", "drift_monitor_for", "open_bundle"]

SHOWN_PROBLEMS = 5
SERVED_BY_OWN_HOLDOUT = frozenset({"device", "fleet_corrected"})  # kinds whose entry.holdout measures what is served


def open_bundle(settings: InferenceSettings, poor_model_threshold: float) -> Predictor:
    """Verify every file of the bundle against its manifest, then open it; raise BundleError if it does not match."""
    manifest = None
    with contextlib.suppress(BundleError):  # verify_bundle reports it below, with the other problems
        manifest = read_manifest(settings.bundle_dir)  # parsed once: verified, then served
    problems = verify_bundle(settings.bundle_dir, manifest)
    if problems:
        shown = "\n".join(f"  {problem}" for problem in problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise BundleError(
            f"refusing bundle {settings.bundle_dir}: {len(problems)} file(s) do not match its manifest\n"
            f"{shown}{more}\nRebuild the bundle with `edgefleet train`, or check it with `edgefleet bundle verify`"
        )
    return Predictor(
        settings.bundle_dir,
        cache_mb=settings.model_cache_mb,
        mode=settings.predictor,
        poor_model_threshold=poor_model_threshold,
        manifest=manifest,
    )


class BundleReferences(Mapping[str, Mapping[str, FeatureReference]]):
    """The bundle's per-device feature references, parsed on a device's first reading, not at start."""

    def __init__(self, devices: Mapping[str, DeviceEntry]) -> None:
        self._devices = devices

    def __getitem__(self, device_id: str) -> Mapping[str, FeatureReference]:
        entry = self._devices.get(device_id)
        if entry is None or not entry.feature_reference:
            raise KeyError(device_id)
        try:
            return {name: FeatureReference.from_text(text) for name, text in entry.feature_reference.items()}
        except ValueError as err:  # a broken reference costs this device its feature drift, nothing more
            logger.warning("Device %s: feature reference unusable, feature drift not judged: %s", device_id, err)
            raise KeyError(device_id) from err

    def __iter__(self) -> Iterator[str]:
        return (device_id for device_id, entry in self._devices.items() if entry.feature_reference)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def drift_monitor_for(predictor: Predictor) -> DriftMonitor:
    """Return a drift monitor judging each device against the hold-out error of the model that serves it here."""
    manifest = predictor.reader.manifest
    holdout = {}
    for device_id, entry in manifest.devices.items():
        mse = entry.holdout.mse if entry.holdout is not None else None
        # The entry's hold-out is the error of the kind training chose for it (its own model, or the
        # fleet model plus its correction); a device served by the plain fleet model is judged by the fleet's.
        if mse is not None and 0 < mse < math.inf and predictor.route(device_id).kind in SERVED_BY_OWN_HOLDOUT:
            holdout[device_id] = mse
    fleet = manifest.fleet.holdout
    if fleet is not None and 0 < fleet.mse < math.inf:
        holdout[FLEET_KEY] = fleet.mse
    return DriftMonitor(DriftSettings(), BundleReferences(manifest.devices), holdout, predictor.features)
