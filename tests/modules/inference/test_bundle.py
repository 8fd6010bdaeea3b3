"""The bundle as the inference module serves it: its drift monitor judges each device by the served model's error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modules.inference.bundle import drift_monitor_for
from modules.inference.predictor import Predictor
from tests.modules.inference.test_service import write_tiny_bundle

pytestmark = pytest.mark.fast


def test_drift_judges_a_fleet_corrected_device_against_its_own_holdout_and_an_unknown_one_against_the_fleets(
    tmp_path,
):
    bundle = write_tiny_bundle(tmp_path / "bundle", "v1")
    predictor = Predictor(bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    monitor = drift_monitor_for(predictor)
    start = datetime(2026, 11, 21, tzinfo=UTC)
    for i in range(60):  # every residual is 1.0; features vary so no reading counts as a stuck sensor
        for device in ("dev-corrected", "never-seen"):
            monitor.observe(device, [20.0 + i, 40.0 - i], 11.0, 10.0, start + timedelta(seconds=i))
    # dev-corrected's entry says the fleet model plus its correction errs by MSE 0.25 on its hold-out;
    # the fleet model's hold-out MSE (what judges a device without an entry) is 2.0.
    assert monitor.status("dev-corrected").residual_ratio == pytest.approx(1.0 / 0.25)
    assert monitor.status("never-seen").residual_ratio == pytest.approx(1.0 / 2.0)
