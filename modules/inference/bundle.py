"""The bundle as the inference module serves it: verified before it opens or while it starts, with its drift monitor."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

from edgefleet.bundle import MANIFEST_NAME, BundleManifest, BundleProblem, DeviceEntry, read_manifest, verify_bundle
from edgefleet.errors import BundleError
from edgefleet.feature_reference import FeatureReference
from modules.inference.drift import FLEET_KEY, DriftMonitor, DriftSettings
from modules.inference.predictor import Predictor
from modules.inference.settings import InferenceSettings

logger = logging.getLogger(__name__)

__all__ = ["BundleReferences", "drift_monitor_for", "open_bundle", "open_bundle_verifying"]

SHOWN_PROBLEMS = 5
SERVED_BY_OWN_HOLDOUT = frozenset({"device", "fleet_corrected"})  # kinds whose entry.holdout measures what is served


def open_bundle(settings: InferenceSettings, poor_model_threshold: float) -> Predictor:
    """Verify every file of the bundle against its manifest, then open it; raise BundleError if it does not match."""
    manifest = None
    with contextlib.suppress(BundleError):  # verify_bundle reports it below, with the other problems
        manifest = read_manifest(settings.bundle_dir)  # parsed once: verified, then served
    problems = verify_bundle(settings.bundle_dir, manifest)
    if problems:
        raise _refusal(settings.bundle_dir, problems)
    return _predictor(settings, poor_model_threshold, manifest)


def open_bundle_verifying(
    settings: InferenceSettings, poor_model_threshold: float
) -> tuple[Predictor, Future[BundleError | None]]:
    """Open the bundle now and verify its files on a thread; the future holds the refusal, or None once they match.

    Whoever opens it this way must send nothing the bundle answered before the future says None.
    Each model file is still checked against its sha256 before it is loaded, so no unverified model ever runs.
    """
    try:
        manifest = read_manifest(settings.bundle_dir)
    except BundleError as err:
        raise _refusal(settings.bundle_dir, [BundleProblem(MANIFEST_NAME, str(err))]) from None
    verified = _verify_on_thread(settings.bundle_dir, manifest)
    try:
        return _predictor(settings, poor_model_threshold, manifest), verified
    except BundleError:  # a model loaded at start (the fleet's) does not match: say all that does not
        refusal = verified.result()
        if refusal is not None:
            raise refusal from None
        raise


def _verify_on_thread(bundle_dir: Path, manifest: BundleManifest) -> Future[BundleError | None]:
    verified: Future[BundleError | None] = Future()

    def verify() -> None:
        try:
            problems = verify_bundle(bundle_dir, manifest)
            verified.set_result(_refusal(bundle_dir, problems) if problems else None)
        except Exception as err:  # an unexpected failure refuses the bundle too, saying why
            verified.set_result(BundleError(f"refusing bundle {bundle_dir}: could not verify it: {err}"))

    threading.Thread(target=verify, name="bundle-verify", daemon=True).start()
    return verified


def _refusal(bundle_dir: Path, problems: Sequence[BundleProblem]) -> BundleError:
    """Return the error that refuses a bundle with these problems, naming the first few."""
    shown = "\n".join(f"  {problem}" for problem in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return BundleError(
        f"refusing bundle {bundle_dir}: {len(problems)} file(s) do not match its manifest\n"
        f"{shown}{more}\nRebuild the bundle with `edgefleet train`, or check it with `edgefleet bundle verify`"
    )


def _predictor(settings: InferenceSettings, poor_model_threshold: float, manifest: BundleManifest | None) -> Predictor:
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
