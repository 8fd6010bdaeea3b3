"""benchmarks/sensor_parse.py: both paths write the same readings and dead letters, and one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks import sensor_parse

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]


def test_today_and_ours_give_the_same_messages_for_every_payload_of_the_mix():
    payloads = sensor_parse.make_payloads(2000)
    received = datetime(2026, 12, 6, 21, 0, 0, 250000, tzinfo=UTC)
    dead_letters = 0
    for payload in payloads:
        today = [json.loads(body) for body in sensor_parse.sensor_today(payload, received)]
        ours = [json.loads(body) for body in sensor_parse.sensor_ours(payload, received)]
        assert ours == today, payload
        dead_letters += sum(obj["schema"] == "edgefleet.deadletter/1" for obj in ours)
    assert 20 <= dead_letters <= 200  # about half of the 5% malformed share is refused


def test_the_last_line_is_json_with_both_paths_and_their_ratio():
    run = subprocess.run(
        [sys.executable, "benchmarks/sensor_parse.py", "--payloads", "400", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result["sensor_us_per_reading"]) == {"today", "ours"}
    assert result["sensor_today_vs_ours"] > 0 and result["inference_decode_today_vs_ours"] > 0
    assert result["readings_per_batch"] > 1
