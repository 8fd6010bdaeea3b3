"""The inference module's desired properties over an in-memory edgeHub: strict patches, last good set on restart."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.modules.fakes import FakeModuleClient
from tests.modules.inference.test_service import write_tiny_bundle

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def _keep_the_log_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def settings(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(
        bundle_dir=write_tiny_bundle(tmp_path / "bundle", "v1"), state_dir=tmp_path / "state", report_interval_s=60.0
    )


def _started(settings: InferenceSettings, client: FakeModuleClient) -> InferenceService:
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    return service


def test_a_string_for_a_number_is_rejected_with_config_error_and_the_last_good_value_kept(settings):
    client = FakeModuleClient({"poorModelThreshold": 2.0})
    service = _started(settings, client)
    try:
        client.patch_desired({"poorModelThreshold": "0.5"})
        assert "poorModelThreshold" in client.reported["configError"]
        assert client.reported["poorModelThreshold"] == 2.0
        client.patch_desired({"poorModelThreshold": None})  # deleted: back to the default
        assert (client.reported["poorModelThreshold"], client.reported["configError"]) == (1.0, None)
    finally:
        service.stop()


def test_after_a_restart_with_a_rejected_twin_the_module_runs_with_its_last_good_values(settings):
    first = _started(settings, FakeModuleClient({"poorModelThreshold": 3.0, "logLevel": "WARNING"}))
    first.stop()

    client = FakeModuleClient({"poorModelThreshold": "3", "logLevel": "WARNING"})
    second = _started(settings, client)
    try:
        assert second.desired.poor_model_threshold == 3.0
        assert second.predictor.poor_model_threshold == 3.0
        assert "poorModelThreshold" in client.reported["configError"]
        assert "last good values" in client.reported["configError"]
    finally:
        second.stop()
