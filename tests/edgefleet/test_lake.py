"""The lake's side files are read safely while the sink is still appending to them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.alerts import ALERT_SCHEMA
from edgefleet.lake import (
    DEADLETTER_DIR,
    EVENTS_DIR,
    append_to_lake,
    drop_duplicate_readings,
    read_deadletters,
    read_drift_alerts,
    read_lake,
)

pytestmark = pytest.mark.fast


def test_a_line_the_sink_is_still_writing_is_left_for_the_next_read(tmp_path: Path) -> None:
    folder = tmp_path / DEADLETTER_DIR
    folder.mkdir()
    whole = json.dumps({"reason": "not_json", "detail": "x"})
    (folder / "2026-12-06.jsonl").write_text(whole + "\n" + '{"reason": "non_fin')

    assert read_deadletters(tmp_path) == [{"reason": "not_json", "detail": "x"}]

    with (folder / "2026-12-06.jsonl").open("a") as handle:
        handle.write('ite"}\n')
    assert [record["reason"] for record in read_deadletters(tmp_path)] == ["not_json", "non_finite"]


def test_a_damaged_line_is_skipped_with_a_warning_and_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / EVENTS_DIR
    folder.mkdir()
    alert = {"schema": ALERT_SCHEMA, "kind": "drift", "device_id": "dev-1"}
    lines = [
        json.dumps({"body": alert}),
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"body": {"schema": ALERT_SCHEMA, "kind": "model_error"}}),
        json.dumps({"body": {**alert, "device_id": "dev-2"}}),
    ]
    (folder / "2026-12-06.jsonl").write_text("\n".join(lines) + "\n")

    with caplog.at_level(logging.WARNING):
        alerts = read_drift_alerts(tmp_path)

    assert [a["device_id"] for a in alerts] == ["dev-1", "dev-2"]
    assert "Skipped 2 unreadable line(s)" in caplog.text


def lake_row(device_id: str, seq: int, source: str, prediction: float | None = None) -> dict[str, object]:
    return {
        "device_id": device_id,
        "seq": seq,
        "ts": pd.Timestamp("2026-12-06T00:00:00Z") + pd.Timedelta(seconds=seq),
        "temperature_c": 20.0 + seq,
        "label": 1.0,
        "prediction_value": prediction,
        "source_module": source,
    }


def test_a_reading_delivered_twice_is_read_once_per_route(tmp_path: Path) -> None:
    # A restart redelivered seq 1 to both routes; the raw and the predicted record of a reading both stay.
    append_to_lake(tmp_path, pd.DataFrame([lake_row("dev-1", 1, "sensor"), lake_row("dev-1", 1, "inference", 0.5)]))
    append_to_lake(
        tmp_path,
        pd.DataFrame(
            [
                lake_row("dev-1", 1, "sensor"),
                lake_row("dev-1", 1, "inference", 0.5),
                lake_row("dev-1", 2, "inference", 0.7),
                lake_row("dev-2", 1, "inference", 0.9),
            ]
        ),
    )

    lake = read_lake(tmp_path)

    assert len(read_lake(tmp_path, keep_duplicates=True)) == 6
    keys = sorted(zip(lake["device_id"], lake["seq"], lake["source_module"], strict=True))
    assert keys == [
        ("dev-1", 1, "inference"),
        ("dev-1", 1, "sensor"),
        ("dev-1", 2, "inference"),
        ("dev-2", 1, "inference"),
    ]


def test_of_two_copies_of_a_reading_the_one_with_a_prediction_is_kept() -> None:
    rows = pd.DataFrame(
        [lake_row("dev-1", 1, "inference"), lake_row("dev-1", 1, "inference", 0.5), lake_row("dev-1", 2, "sensor")]
    )

    kept = drop_duplicate_readings(rows)

    assert list(kept["seq"]) == [1, 2]
    assert kept.loc[kept["seq"] == 1, "prediction_value"].tolist() == [0.5]


def test_rows_without_a_seq_are_never_merged() -> None:
    rows = pd.DataFrame([lake_row("dev-1", 1, "sensor"), lake_row("dev-1", 1, "sensor")])
    rows["seq"] = [None, None]

    assert len(drop_duplicate_readings(rows)) == 2
