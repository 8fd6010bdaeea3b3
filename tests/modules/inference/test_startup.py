"""The inference module refuses a bundle that does not match its manifest, and bad settings, with a clear message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from edgefleet.bundle import read_manifest
from edgefleet.errors import EdgefleetError
from tests.modules.inference.test_service import write_tiny_bundle


def _run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("IOTEDGE_", "EdgeHub", "FIELD_"))}
    return subprocess.run(
        [sys.executable, "-m", f"modules.{module}"], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_inference_refuses_a_tampered_bundle_and_names_the_file(start_edge, small_bundle, tmp_path):
    tampered = tmp_path / "bundle"
    shutil.copytree(small_bundle, tampered)
    manifest = read_manifest(tampered)
    device = next(d for d, e in manifest.devices.items() if e.kind == "device")
    victim = tampered / manifest.devices[device].onnx.path
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")

    with pytest.raises(EdgefleetError) as failure:
        start_edge(modules=("inference",), bundle_dir=tampered)
    log = str(failure.value)
    assert "refusing bundle" in log
    assert manifest.devices[device].onnx.path in log
    assert "sha256" in log
    assert "Traceback" not in log


def test_inference_without_a_bundle_says_how_to_fix_it(tmp_path):
    result = _run_module("inference", {"BUNDLE_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 2
    assert "BUNDLE_DIR" in result.stderr and "edgefleet train" in result.stderr
    assert "Traceback" not in result.stderr


def test_inference_with_a_state_dir_it_cannot_write_says_to_set_state_dir(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    bundle = write_tiny_bundle(tmp_path / "bundle", "v1")
    result = _run_module("inference", {"BUNDLE_DIR": str(bundle), "STATE_DIR": str(not_a_folder / "state")})
    assert result.returncode == 2
    assert "STATE_DIR" in result.stderr and "a-file" in result.stderr
    assert "Traceback" not in result.stderr


def test_sensor_with_a_user_but_no_password_file_says_to_mount_one():
    result = _run_module("sensor", {"FIELD_MQTT_HOST": "localhost", "FIELD_MQTT_USERNAME": "me"})
    assert result.returncode == 2
    assert "FIELD_MQTT_USERNAME is set but FIELD_MQTT_PASSWORD_FILE is not" in result.stderr
    assert "Traceback" not in result.stderr


def test_module_outside_iot_edge_explains_the_dev_variables(small_bundle):
    result = _run_module("inference", {"BUNDLE_DIR": str(small_bundle)})
    assert result.returncode == 2
    assert "EdgeHubConnectionString" in result.stderr
    assert "Traceback" not in result.stderr
