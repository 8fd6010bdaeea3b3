"""The lake's side files are read safely while the sink is still appending to them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgefleet.alerts import ALERT_SCHEMA
from edgefleet.lake import DEADLETTER_DIR, EVENTS_DIR, read_deadletters, read_drift_alerts

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
