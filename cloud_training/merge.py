"""The driver's side of retraining: merge champion and challengers into one bundle, judge the fleet, write the manifest.

`merge_bundle` copies every model the champion keeps byte for byte (same sha256) and writes the
adopted challengers' files with the same code as `edgefleet train` (`export.write_device_entry`).
`summarize_decisions` says whether the fleet improved, which is what moves the registry's `champion`
alias. `write_deployment_manifest` expands `deployment/deployment.template.json` for the new bundle
and writes it in the deployed form (`edgefleet.deployment.build`, as `edgefleet manifest build` does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cloud_training.export import content_version, library_versions, staged_bundle_dir, write_device_entry
from edgefleet.bundle import MANIFEST_NAME, BundleManifest, DeviceEntry, ModelFile, sha256_bytes
from edgefleet.deployment import deployed_form, image_name, write_deployment_manifest
from edgefleet.errors import BundleError

logger = logging.getLogger(__name__)

KEPT_CHAMPION = "champion"
KEPT_CHALLENGER = "challenger"
INFERENCE_IMAGE = "edgefleet-inference"
SENSOR_IMAGE = "edgefleet-sensor"
FIELD_BROKER_IMAGE = "edgefleet-field-broker"  # deployment/images/field-broker/module.json


def merge_bundle(
    out_dir: Path,
    champion_dir: Path,
    champion: BundleManifest,
    adopted: pd.DataFrame,
    mlflow_run_id: str | None = None,
) -> BundleManifest:
    """Write the champion's bundle with the adopted challengers' models swapped in, atomically."""
    rows: list[dict[str, Any]] = adopted.to_dict("records")  # type: ignore[assignment]
    challengers = {str(row["device_id"]): row for row in rows}
    with staged_bundle_dir(out_dir) as staging:
        # The fleet model is the champion's: it is the fallback for every device, and the picked
        # devices' fresh rows are too narrow a sample to refit it (`edgefleet train` does that).
        for model_file in (champion.fleet.joblib, champion.fleet.onnx):
            if model_file is not None:
                _copy_pinned(champion_dir, staging, model_file)
        devices: dict[str, DeviceEntry] = {}
        for device_id in sorted(set(champion.devices) | set(challengers)):
            row = challengers.get(device_id)
            if row is not None:
                devices[device_id] = write_device_entry(staging, row)
                continue
            entry = champion.devices[device_id]
            for model_file in (entry.joblib, entry.onnx):
                if model_file is not None:
                    _copy_pinned(champion_dir, staging, model_file)
            devices[device_id] = entry
        created = datetime.now(UTC)
        manifest = BundleManifest(
            bundle_version=content_version(created, champion.fleet, devices),
            created_at=created.isoformat(timespec="seconds"),
            features=champion.features,
            target=champion.target,
            libraries=library_versions(),
            feature_stats=champion.feature_stats,
            fleet=champion.fleet,
            devices=devices,
            mlflow_run_id=mlflow_run_id,
        )
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
    logger.info("merged bundle %s: %d of %d devices replaced", manifest.bundle_version, len(challengers), len(devices))
    return manifest


def _copy_pinned(source_dir: Path, target_dir: Path, model_file: ModelFile) -> None:
    """Copy one pinned file, refusing bytes that no longer match the champion's manifest."""
    source = source_dir / model_file.path
    try:
        data = source.read_bytes()
    except OSError as err:
        raise BundleError(f"{source}: cannot read the champion's file ({err})") from err
    if sha256_bytes(data) != model_file.sha256:
        raise BundleError(f"{source}: sha256 does not match the champion's manifest; it changed during retraining")
    target = target_dir / model_file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def summarize_decisions(decisions: pd.DataFrame) -> dict[str, Any]:
    """Return picks by reason, devices improved, and the fresh hold-out MSE before and after."""
    picked = decisions[decisions["reasons"].notna()]
    by_reason: dict[str, int] = {}
    for reasons in picked["reasons"]:
        for reason in str(reasons).split(","):
            by_reason[reason] = by_reason.get(reason, 0) + 1
    improved = decisions["kept"] == KEPT_CHALLENGER
    compared = decisions[decisions["champion_mse"].notna()]
    champion_mse = compared["champion_mse"].to_numpy(dtype=float)
    merged_mse = np.where(
        compared["kept"] == KEPT_CHALLENGER, compared["challenger_mse"].to_numpy(dtype=float), champion_mse
    )
    fresh_champion = float(np.mean(champion_mse)) if len(compared) else None
    fresh_merged = float(np.mean(merged_mse)) if len(compared) else None
    return {
        "devices": len(decisions),
        "picked": len(picked),
        "picked_by_reason": dict(sorted(by_reason.items())),
        "improved": int(improved.sum()),
        "kept_champion": len(picked) - int(improved.sum()),
        "compared": len(compared),
        "fresh_mse_champion": fresh_champion,
        "fresh_mse_merged": fresh_merged,
        # Per device the better model is kept, so the mean falls exactly when a challenger won.
        "fleet_improved": fresh_merged is not None and fresh_champion is not None and fresh_merged < fresh_champion,
    }


def deployment_variables(
    bundle_version: str, sensor_version: str, registry: str = "", extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the template's placeholders for a bundle: images and the twin's expected bundle version."""
    return {
        **(extra or {}),
        "MODULES.inference": image_name(INFERENCE_IMAGE, bundle_version, registry),
        "MODULES.sensor": image_name(SENSOR_IMAGE, sensor_version, registry),
        # the field broker is built from the same code version as the sensor
        "MODULES.fieldbroker": image_name(FIELD_BROKER_IMAGE, sensor_version, registry),
        "BUNDLE_VERSION": bundle_version,
    }


__all__ = ["KEPT_CHALLENGER", "KEPT_CHAMPION", "deployed_form", "deployment_variables", "write_deployment_manifest"]
