import json
import shutil

import numpy as np
import pytest

from edgefleet.bundle import BundleReader, read_manifest, verify_bundle
from edgefleet.errors import BundleError

pytestmark = pytest.mark.fast


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(small_bundle, target)
    return target


def first_trained(manifest):
    return next(d for d, e in manifest.devices.items() if e.kind == "device")


def test_untouched_bundle_verifies(small_bundle):
    assert verify_bundle(small_bundle) == []


def test_verify_names_a_tampered_model_file(bundle_copy):
    manifest = read_manifest(bundle_copy)
    target = manifest.devices[first_trained(manifest)].joblib
    path = bundle_copy / target.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    problems = verify_bundle(bundle_copy)
    assert [p.file for p in problems] == [target.path]
    assert "sha256" in problems[0].problem


def test_verify_names_missing_and_unlisted_files(bundle_copy):
    manifest = read_manifest(bundle_copy)
    (bundle_copy / manifest.fleet.joblib.path).unlink()
    (bundle_copy / "models" / "intruder.joblib").write_bytes(b"not ours")
    problems = {p.file: p.problem for p in verify_bundle(bundle_copy)}
    assert problems == {"fleet.joblib": "missing", "models/intruder.joblib": "not listed in the manifest"}


def test_verify_calls_a_directory_or_dangling_link_in_a_model_files_place_missing(bundle_copy):
    manifest = read_manifest(bundle_copy)
    device = first_trained(manifest)
    as_directory = bundle_copy / manifest.devices[device].joblib.path
    as_directory.unlink()
    as_directory.mkdir()
    dangling = bundle_copy / manifest.devices[device].onnx.path
    dangling.unlink()
    dangling.symlink_to(bundle_copy / "nowhere")
    problems = {p.file: p.problem for p in verify_bundle(bundle_copy)}
    assert problems[manifest.devices[device].joblib.path] == "missing"
    assert problems[manifest.devices[device].onnx.path] == "missing"


def test_verify_names_a_model_file_that_grew(bundle_copy):
    manifest = read_manifest(bundle_copy)
    target = manifest.fleet.joblib
    with (bundle_copy / target.path).open("ab") as fh:
        fh.write(b"appended")
    [problem] = verify_bundle(bundle_copy)
    assert (
        problem.file == target.path
        and problem.problem == f"size {target.size_bytes + 8} != manifest {target.size_bytes}"
    )


def test_verify_reports_a_broken_manifest(bundle_copy):
    raw = json.loads((bundle_copy / "manifest.json").read_text())
    del raw["features"]
    (bundle_copy / "manifest.json").write_text(json.dumps(raw))
    [problem] = verify_bundle(bundle_copy)
    assert problem.file == "manifest.json" and "features" in problem.problem


def test_reader_refuses_to_load_a_tampered_model(bundle_copy):
    manifest = read_manifest(bundle_copy)
    device = first_trained(manifest)
    (bundle_copy / manifest.devices[device].onnx.path).write_bytes(b"evil")
    reader = BundleReader(bundle_copy)
    with pytest.raises(BundleError, match="sha256 does not match"):
        reader.predict(device, np.zeros((1, len(reader.features))))


def test_reader_routes_unknown_poor_and_skipped_devices_to_the_fleet_model(small_bundle):
    reader = BundleReader(small_bundle)
    manifest = reader.manifest
    poor = next(d for d, e in manifest.devices.items() if e.status == "fallback")
    skipped = next(d for d, e in manifest.devices.items() if e.status == "skipped")
    assert reader.route("never-seen").fallback_reason == "no_model"
    assert reader.route(poor).fallback_reason == "poor_model"
    assert reader.route(skipped).fallback_reason == "no_model"
    own = reader.route(first_trained(manifest))
    assert (own.kind, own.fallback_reason) == ("device", None)


def test_reader_fills_missing_features_and_uses_the_fleet_model(small_bundle):
    reader = BundleReader(small_bundle)
    device = first_trained(reader.manifest)
    row = np.array([[20.0, np.nan, 2.0, 50.0]])
    filled = row.copy()
    filled[0, 1] = reader.manifest.feature_stats["humidity_pct"].mean
    value, _ = reader.predict(device, row)
    fleet_value, _ = reader.predict("never-seen", filled)
    assert value[0] == pytest.approx(fleet_value[0])


@pytest.mark.parametrize("runtime", ["joblib", "onnx"])
def test_reader_treats_a_value_beyond_float32_as_missing_instead_of_failing_the_batch(small_bundle, runtime):
    reader = BundleReader(small_bundle, runtime=runtime)
    device = first_trained(reader.manifest)
    rows = np.array([[20.0, 1e39, 2.0, 50.0], [20.0, 50.0, 2.0, 50.0]])
    filled = rows[:1].copy()
    filled[0, 1] = reader.manifest.feature_stats["humidity_pct"].mean
    values, _ = reader.predict(device, rows)
    fleet_value, _ = reader.predict("never-seen", filled)
    own_value, _ = reader.predict(device, rows[1:])
    assert values == pytest.approx([fleet_value[0], own_value[0]])


def test_onnx_and_joblib_runtimes_agree(small_bundle):
    x = np.random.default_rng(0).normal([20, 50, 2, 50], [6, 12, 1.5, 25], size=(50, 4))
    onnx, joblib = BundleReader(small_bundle, runtime="onnx"), BundleReader(small_bundle, runtime="joblib")
    for device in onnx.manifest.devices:
        a, _ = onnx.predict(device, x)
        b, _ = joblib.predict(device, x)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_reader_cache_stays_within_its_byte_budget(small_bundle):
    reader = BundleReader(small_bundle, runtime="joblib", cache_bytes=1)
    for device in reader.manifest.devices:
        reader.predict(device, np.zeros((1, 4)))
    assert len(reader._cache) == 1  # only the most recent model stays when the budget is tiny
