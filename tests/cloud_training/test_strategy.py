"""The fleet-wide check serves one kind everywhere when it beats the per-device choices on rows they did not see."""

import pandas as pd
import pytest

from cloud_training.device_training import check_halves, results_frame
from cloud_training.strategy import FLEET_STRATEGY, apply_strategy, check_strategy

pytestmark = pytest.mark.fast


def results(rows: list[dict]) -> pd.DataFrame:
    """Return a results table of served devices with the given check and final-slice columns."""
    from cloud_training.device_training import DeviceResult

    base = {
        "status": "trained",
        "corrected_mse": 0.6,
        "corrected_mae": 0.6,
        "corrected_r2": 0.7,
        "correction": '{"intercept":0.5,"coef":[]}',
        "fleet_mse": 1.0,
        "fleet_mae": 0.8,
        "fleet_r2": 0.5,
        "device_mse": 0.25,
        "device_mae": 0.4,
        "device_r2": 0.9,
        "inner_fleet_mse": 1.0,
        "joblib_blob": b"model",
    }
    return results_frame([DeviceResult(device_id=f"d{i}", **{**base, **row}) for i, row in enumerate(rows)])


def checked(kind: str, device_sse: float, fleet_sse: float, corrected_sse: float, **row: object) -> dict:
    return {
        "kind": kind,
        "mse": 0.5,
        "check_kind": kind,
        "check_rows": 4,
        "check_device_sse": device_sse,
        "check_fleet_sse": fleet_sse,
        "check_corrected_sse": corrected_sse,
        **row,
    }


def test_per_device_choices_that_lose_to_the_fleet_on_their_check_rows_all_move_to_the_fleet_model():
    table = results(
        [
            checked("device", device_sse=9.0, fleet_sse=4.0, corrected_sse=5.0),  # lucky on its inner slice
            checked("fleet_corrected", device_sse=9.0, fleet_sse=4.0, corrected_sse=6.0),  # likewise
            checked("fleet", device_sse=8.0, fleet_sse=4.0, corrected_sse=4.5, status="fallback", mse=1.0),
        ]
    )
    check = check_strategy(table)
    assert (check.strategy, check.devices, check.rows) == ("fleet", 3, 12)
    assert check.per_device_mse == pytest.approx((9.0 + 6.0 + 4.0) / 12)
    assert check.fleet_mse == pytest.approx(12.0 / 12)
    assert check.device_mse == pytest.approx(26.0 / 12)
    moved = apply_strategy(table, check)
    assert list(moved["kind"]) == ["fleet", "fleet", "fleet"]
    assert list(moved["status"]) == ["fallback"] * 3
    assert list(moved["reason"][:2]) == [FLEET_STRATEGY] * 2
    assert moved["detail"][0].startswith("the fleet-wide check chose the fleet model for every device")
    assert list(moved["mse"]) == list(moved["fleet_mse"])  # the reported error is now the fleet model's


def test_per_device_choices_that_win_on_their_check_rows_stay():
    table = results(
        [
            checked("device", device_sse=1.0, fleet_sse=4.0, corrected_sse=3.0),
            checked("fleet_corrected", device_sse=9.0, fleet_sse=4.0, corrected_sse=2.0),
        ]
    )
    check = check_strategy(table)
    assert check.strategy == "per_device"
    assert apply_strategy(table, check) is table


def test_skipped_devices_and_devices_without_check_rows_take_no_part():
    table = results(
        [
            checked("device", device_sse=1.0, fleet_sse=4.0, corrected_sse=3.0),
            checked("device", device_sse=99.0, fleet_sse=1.0, corrected_sse=1.0, status="skipped"),
            {"kind": "device", "mse": 0.5},  # too few inner rows for a check
        ]
    )
    check = check_strategy(table)
    assert (check.strategy, check.devices, check.rows) == ("per_device", 1, 4)


def test_a_fleet_with_no_check_rows_keeps_its_per_device_choices():
    table = results([{"kind": "device", "mse": 0.5}])
    check = check_strategy(table)
    assert (check.strategy, check.rows, check.per_device_mse) == ("per_device", 0, None)


def test_each_device_chooses_on_the_older_half_of_its_inner_slice_and_reports_the_newer_half():
    import numpy as np

    fleet = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    device = np.array([0.01, 0.01, 0.01, 4.0, 4.0, 4.0])  # wins the older half, loses the newer one
    check = check_halves({"fleet": fleet, "fleet_corrected": fleet, "device": device}, margin=0.02)
    assert check["check_kind"] == "device" and check["check_rows"] == 3
    assert (check["check_device_sse"], check["check_fleet_sse"]) == (12.0, 3.0)
    assert check_halves({"device": device}, margin=0.02) == {}  # no fleet model: no check


def test_a_fleet_of_unrelated_devices_serves_every_own_model_when_they_win_the_pooled_check():
    table = results(
        [
            checked("device", device_sse=1.0, fleet_sse=40.0, corrected_sse=20.0),
            # Too few inner rows to leave the correction on its own evidence; the fleet's pooled evidence is plenty.
            checked("fleet_corrected", device_sse=1.5, fleet_sse=40.0, corrected_sse=10.0),
            checked("fleet", device_sse=2.0, fleet_sse=3.0, corrected_sse=3.0, status="fallback", reason="poor_model"),
        ]
    )
    check = check_strategy(table)
    assert check.strategy == "device"
    moved = apply_strategy(table, check)
    assert list(moved["kind"]) == ["device"] * 3 and list(moved["status"]) == ["trained"] * 3
    assert moved["reason"].isna().all() and "own model for every device" in moved["detail"][2]
    assert list(moved["mse"][1:]) == list(moved["device_mse"][1:])  # the first served its own model already


def test_a_fleet_of_offsets_serves_every_device_the_fleet_model_plus_its_offset():
    table = results(
        [
            checked("device", device_sse=6.0, fleet_sse=20.0, corrected_sse=2.0),  # lucky on its inner slice
            checked("fleet", device_sse=6.0, fleet_sse=20.0, corrected_sse=2.5, status="fallback"),
        ]
    )
    check = check_strategy(table)
    assert (check.strategy, check.corrected_mse) == ("fleet_corrected", pytest.approx(4.5 / 8))
    moved = apply_strategy(table, check)
    assert list(moved["kind"]) == ["fleet_corrected"] * 2 and list(moved["mse"]) == [0.6, 0.6]


def test_near_ties_go_to_the_simpler_strategy():
    table = results([checked("fleet", device_sse=4.0, fleet_sse=4.0, corrected_sse=3.99, status="fallback")])
    assert check_strategy(table).strategy == "fleet"
