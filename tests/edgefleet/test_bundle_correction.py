"""Partial pooling in the bundle: `fleet_corrected` entries, their validation and their predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.bundle import MANIFEST_NAME, BundleReader, Correction, Route, read_manifest, verify_bundle
from edgefleet.errors import BundleError

pytestmark = pytest.mark.fast

CORRECTION = Correction(intercept=1.5, coef=(0.02, -0.01, 0.3, 0.005))  # in the bundle's feature order
ROWS = np.random.default_rng(4).normal([20, 50, 2, 50], [6, 12, 1.5, 25], size=(64, 4))


def rewrite_devices(source: Path, target: Path, updates: dict[str, dict[str, Any]]) -> Path:
    """Copy a bundle and change some device entries, as a training run choosing per device would write them."""
    shutil.copytree(source, target)
    manifest = read_manifest(target)
    devices = {**manifest.devices}
    for device_id, update in updates.items():
        devices[device_id] = devices[device_id].model_copy(update=update)
    (target / MANIFEST_NAME).write_text(manifest.model_copy(update={"devices": devices}).to_json())
    return target


def corrected_devices(manifest: Any) -> tuple[str, str]:
    """Return a trained device (its model files stay in the bundle) and a skipped one (no model at all)."""
    trained = next(d for d, e in manifest.devices.items() if e.status == "trained")
    skipped = next(d for d, e in manifest.devices.items() if e.status == "skipped")
    return trained, skipped


@pytest.fixture
def corrected_bundle(small_bundle: Path, tmp_path: Path) -> Path:
    update = {"kind": "fleet_corrected", "correction": CORRECTION}
    devices = corrected_devices(read_manifest(small_bundle))
    return rewrite_devices(small_bundle, tmp_path / "bundle", dict.fromkeys(devices, update))


def write_manifest_text(bundle: Path, edit: Any) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(raw)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))  # json.dumps writes NaN as the bare token NaN


def test_a_fleet_corrected_device_predicts_the_fleet_model_plus_its_correction_on_the_onnx_path(corrected_bundle):
    reader = BundleReader(corrected_bundle, runtime="onnx")
    fleet = BundleReader(corrected_bundle, runtime="joblib").model(Route("fleet", None, "no_model"))
    expected = fleet.predict(ROWS) + CORRECTION.intercept + ROWS @ np.array(CORRECTION.coef)
    for device in corrected_devices(reader.manifest):
        values, route = reader.predict(device, ROWS)
        assert route == Route("fleet_corrected", device, None)
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-3)  # the ONNX fleet model runs in float32


def test_a_fleet_corrected_device_predicts_exactly_fleet_plus_correction_on_the_joblib_path(corrected_bundle):
    reader = BundleReader(corrected_bundle, runtime="joblib")
    device, _ = corrected_devices(reader.manifest)
    fleet_values, _ = reader.predict("never-seen", ROWS)
    values, _ = reader.predict(device, ROWS)
    np.testing.assert_allclose(values - fleet_values, CORRECTION.intercept + ROWS @ np.array(CORRECTION.coef))


def test_a_fleet_corrected_reading_missing_a_feature_gets_the_plain_fleet_model_on_filled_values(corrected_bundle):
    reader = BundleReader(corrected_bundle)
    device, _ = corrected_devices(reader.manifest)
    row = np.array([[20.0, np.nan, 2.0, 50.0]])
    value, _ = reader.predict(device, row)
    fleet_value, _ = reader.predict("never-seen", np.where(np.isfinite(row), row, reader.fill_values))
    assert value[0] == pytest.approx(fleet_value[0])


def test_the_reader_gives_a_devices_correction_as_numpy_arrays_and_none_for_others(corrected_bundle):
    reader = BundleReader(corrected_bundle)
    device, _ = corrected_devices(reader.manifest)
    intercept, coef = reader.correction(device)
    assert intercept == CORRECTION.intercept and coef.tolist() == list(CORRECTION.coef)
    assert reader.correction(device)[1] is coef  # parsed once
    assert reader.correction("never-seen") is None


def test_a_correction_with_a_coefficient_per_missing_feature_fails_verification_naming_the_device(
    small_bundle, tmp_path
):
    device, _ = corrected_devices(read_manifest(small_bundle))
    short = Correction(intercept=0.0, coef=(0.1, 0.2, 0.3))
    bundle = rewrite_devices(small_bundle, tmp_path / "b", {device: {"kind": "fleet_corrected", "correction": short}})
    with pytest.raises(BundleError, match=rf"device '{device}': its correction has 3 coefficient\(s\) for 4 feature"):
        read_manifest(bundle)
    [problem] = verify_bundle(bundle)
    assert problem.file == MANIFEST_NAME and "3 coefficient(s) for 4 feature(s)" in problem.problem


def test_a_nan_in_a_correction_fails_loading_the_bundle_with_a_clear_message(corrected_bundle):
    device, _ = corrected_devices(read_manifest(corrected_bundle))

    def poison(raw: dict[str, Any]) -> None:
        raw["devices"][device]["correction"]["coef"][2] = float("nan")

    write_manifest_text(corrected_bundle, poison)
    with pytest.raises(BundleError, match=rf"devices\.{device}\.correction\.coef: .*must be finite numbers, got nan"):
        BundleReader(corrected_bundle)


def test_a_fleet_corrected_entry_without_a_correction_is_refused(corrected_bundle):
    device, _ = corrected_devices(read_manifest(corrected_bundle))
    write_manifest_text(corrected_bundle, lambda raw: raw["devices"][device].pop("correction"))
    with pytest.raises(BundleError, match=rf"at devices\.{device}: kind 'fleet_corrected' needs a correction"):
        read_manifest(corrected_bundle)


def test_a_device_kind_entry_without_a_model_file_is_refused(corrected_bundle):
    _, skipped = corrected_devices(read_manifest(corrected_bundle))
    write_manifest_text(corrected_bundle, lambda raw: raw["devices"][skipped].update(kind="device"))
    with pytest.raises(BundleError, match="kind 'device' needs the device model's joblib file"):
        read_manifest(corrected_bundle)


def test_the_entrys_kind_overrides_its_status_and_bundles_without_kind_route_by_status(small_bundle, tmp_path):
    manifest = read_manifest(small_bundle)
    trained = next(d for d, e in manifest.devices.items() if e.kind == "device")
    poor = next(d for d, e in manifest.devices.items() if e.status == "fallback")
    before_kind = {device: {"kind": None, "correction": None} for device in manifest.devices}
    old = BundleReader(rewrite_devices(small_bundle, tmp_path / "old", before_kind))
    assert all(entry.kind is None for entry in old.manifest.devices.values())
    assert old.route(trained) == Route("device", trained, None)
    assert old.route(poor) == Route("fleet", None, "poor_model")
    bundle = rewrite_devices(small_bundle, tmp_path / "b", {trained: {"kind": "fleet"}, poor: {"kind": "device"}})
    reader = BundleReader(bundle)
    assert reader.route(trained) == Route("fleet", None, "poor_model")
    assert reader.route(poor) == Route("device", poor, None)
