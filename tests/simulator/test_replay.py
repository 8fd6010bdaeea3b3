"""Replay: recorded CSV / JSON Lines files come back as the same readings at their original pacing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from simulator.errors import SimulatorError
from simulator.replay import read_replay
from simulator.stream import generate
from tests.simulator.conftest import decode, profile

pytestmark = pytest.mark.fast


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Compare decoded messages as numbers (19 == 19.0), NaN equal to NaN."""

    def normalized(obj: dict[str, Any]) -> str:
        numbers = {**obj, "features": {k: float(v) for k, v in obj["features"].items()}}
        if "label" in obj:
            numbers["label"] = float(obj["label"])
        return json.dumps(numbers, sort_keys=True)

    return normalized(a) == normalized(b)


def test_replaying_a_recorded_stream_reproduces_every_message_in_order(tmp_path: Path):
    recorded = list(generate(profile(faults={"nan_rate": 0.05, "missing_feature_rate": 0.05}, duration_s=1.0)))
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(decode(e.payload)) + "\n" for e in recorded))
    replayed = list(read_replay(path))
    assert len(replayed) == len(recorded)
    for original, again in zip(recorded, replayed, strict=True):
        assert same(decode(again.payload), decode(original.payload))
        assert (again.device_id, again.seq, again.topic) == (original.device_id, original.seq, original.topic)
        assert (again.valid, again.complete, again.duplicate) == (original.valid, original.complete, False)
        # Original pacing: offsets are the recorded timestamps after the first one.
        assert again.offset_s == pytest.approx(original.offset_s - recorded[0].offset_s, abs=0.0011)


def test_a_flat_csv_gets_per_device_seqs_and_keeps_empty_cells_and_nans(tmp_path: Path):
    path = tmp_path / "history.csv"
    path.write_text(
        "device_id,ts,temperature_c,load_pct,label,prediction_value\n"
        "dev-1,2026-11-01T00:00:00Z,20.5,40,1.5,9\n"
        "dev-2,1793491201,21.5,,2.5,9\n"  # epoch seconds; load_pct left empty
        "dev-1,2026-11-01 00:00:03,nan,41,,9\n"  # no zone (read as UTC); NaN; no label
    )
    first, second, third = read_replay(path, topic_template="site/{device_id}")
    assert [e.offset_s for e in (first, second, third)] == [0.0, 1.0, 3.0]
    assert [(e.device_id, e.seq) for e in (first, second, third)] == [("dev-1", 0), ("dev-2", 0), ("dev-1", 1)]
    assert decode(first.payload) == {
        "schema": "edgefleet.telemetry/1",
        "device_id": "dev-1",
        "seq": 0,
        "ts": "2026-11-01T00:00:00Z",
        "features": {"temperature_c": 20.5, "load_pct": 40.0},
        "label": 1.5,
    }
    assert first.topic == "site/dev-1"
    assert decode(second.payload)["features"] == {"temperature_c": 21.5}
    assert not first.complete  # it lacks the physics features humidity_pct and vibration_mm_s
    third_obj = decode(third.payload)
    assert math.isnan(third_obj["features"]["temperature_c"]) and "label" not in third_obj and not third.valid


def test_recorded_seqs_are_kept_and_a_repeated_seq_is_a_duplicate(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    rows = [{"device_id": "d", "ts": 1793491200000 + i, "seq": seq, "x": 1.0} for i, seq in enumerate([7, 8, 8])]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    replayed = list(read_replay(path))
    assert [(e.seq, e.duplicate) for e in replayed] == [(7, False), (8, False), (8, True)]
    assert [e.offset_s for e in replayed] == pytest.approx([0.0, 0.001, 0.002], abs=1e-6)  # epoch ms


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "device_id,ts,x\nd,yesterday,1\n", r"a.csv:2: ts 'yesterday' is neither ISO-8601 nor an epoch"),
        ("b.csv", "device_id,ts,x\nd,2026-11-01T00:00:00Z,abc\n", r"b.csv:2: feature 'x' 'abc' is not a number"),
        ("c.jsonl", '{"device_id": "d", "ts": 1}\nnot json\n', r"c.jsonl:1: no feature values"),
        ("d.jsonl", '{"device_id": "d", "ts": 1, "x": 1}\nnot json\n', r"d.jsonl:2: not JSON"),
        ("e.csv", "ts,x\n2026-11-01T00:00:00Z,1\n", r"e.csv:2: needs a device_id"),
        ("f.parquet", "", r"use a .csv or .jsonl file"),
    ],
)
def test_a_bad_replay_file_names_the_line_and_the_problem(tmp_path: Path, name: str, text: str, message: str):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SimulatorError, match=message):
        list(read_replay(path))
