"""The local IoT Hub sink: upstream messages to lake rows and JSON Lines side files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

import edgehub.sink as sink_module
from edgefleet.envelope import compress_body
from edgefleet.history import read_history
from edgefleet.lake import DEADLETTER_DIR, EVENTS_DIR, append_to_lake, read_lake
from edgefleet.messages import RESERVED_FEATURE_NAMES, RESERVED_FEATURE_PREFIXES
from edgefleet.routes import Message
from edgehub.sink import LakeSink

pytestmark = pytest.mark.fast

JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def reading(seq: int, device: str = "dev-1", day: str = "2026-11-20") -> dict[str, object]:
    return {
        "schema": "edgefleet.telemetry/1",
        "device_id": device,
        "seq": seq,
        "ts": f"{day}T12:00:00Z",
        "features": {"temp": float(seq)},
    }


def message(body: object, module: str = "sensor", output: str = "telemetry", **kwargs: object) -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("system_properties", JSON)
    return Message("edge1", module, output, body=raw, **kwargs)  # type: ignore[arg-type]


def jsonl(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_a_batch_of_100_readings_becomes_100_rows_split_by_day(tmp_path: Path) -> None:
    readings = [reading(seq, day="2026-11-20" if seq < 60 else "2026-11-21") for seq in range(100)]

    with LakeSink(tmp_path, flush_every_s=60, flush_rows=1000) as sink:
        sink(message({"schema": "edgefleet.batch/1", "readings": readings}))

    lake = pd.read_parquet(tmp_path)
    assert len(lake) == 100
    assert sorted(lake["seq"]) == list(range(100))
    assert lake["label"].isna().all()
    assert sorted(p.parent.name for p in tmp_path.glob("date=*/*.parquet")) == ["date=2026-11-20", "date=2026-11-21"]
    assert sink.stats()["rows_written"] == 100


def test_rows_flush_by_size_and_by_time(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, flush_every_s=0.2, flush_rows=3)
    try:
        for seq in range(3):
            sink(message(reading(seq)))
        assert sink.stats()["rows_written"] == 3  # the third row filled the buffer
        sink(message(reading(3)))
        deadline = time.monotonic() + 5
        while sink.stats()["rows_written"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.stats()["rows_written"] == 4
    finally:
        sink.close()


def test_predictions_keep_their_prediction_and_edge_columns(tmp_path: Path) -> None:
    prediction = {
        **reading(7),
        "label": 2.0,
        "prediction": {"value": 1.5, "model": "device", "model_version": "v1", "fallback_reason": None},
        "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T12:00:01Z", "latency_ms": 3.0},
    }

    with LakeSink(tmp_path) as sink:
        sink(message(prediction, module="inference", output="predictions"))
        sink(message(reading(8)))

    lake = pd.read_parquet(tmp_path).sort_values("seq")
    first = lake.iloc[0]
    assert (first["prediction_value"], first["prediction_model"], first["edge_device"]) == (1.5, "device", "edge1")
    assert first["edge_received_ts"] == pd.Timestamp("2026-11-20T12:00:01Z")
    assert first["label"] == 2.0 and first["source_module"] == "inference"
    assert pd.isna(lake.iloc[1]["prediction_value"]) and lake.iloc[1]["source_module"] == "sensor"


def test_bad_readings_and_other_messages_go_to_side_files_that_training_skips(tmp_path: Path) -> None:
    bad = {**reading(2), "features": {"temp": "hot"}}
    with LakeSink(tmp_path) as sink:
        sink(message({"schema": "edgefleet.batch/1", "readings": [reading(1), bad]}))
        sink(message({"schema": "edgefleet.deadletter/1", "reason": "not_json", "source": "x"}))
        sink(message({"schema": "edgefleet.alert/1", "level": "high"}, output="alerts", properties={"kind": "alert"}))
        sink(message(b"\xff not json"))

    dead = jsonl(tmp_path / DEADLETTER_DIR)
    events = jsonl(tmp_path / EVENTS_DIR)
    assert [d["reason"] for d in dead] == ["wrong_type", "not_json"]
    assert dead[0]["source"] == "sensor/telemetry"
    assert [e["output"] for e in events] == ["alerts", "telemetry"]
    assert events[0]["body"] == {"schema": "edgefleet.alert/1", "level": "high"}
    assert events[0]["properties"] == {"kind": "alert"}
    history, features = read_history(tmp_path)
    assert len(history) == 1 and features == ("temp",)


def predicted(seq: int, features: dict[str, float]) -> dict[str, object]:
    """Return a prediction as the inference module sends it (only the bundle's features)."""
    return {
        **reading(seq),
        "features": features,
        "prediction": {"value": 1.5, "model": "device", "model_version": "v1", "fallback_reason": None},
        "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T12:00:01Z", "latency_ms": 3.0},
    }


def lake_features(lake: Path) -> set[str]:
    columns = set(pd.read_parquet(lake).columns)
    return {c for c in columns if c not in RESERVED_FEATURE_NAMES and not c.startswith(RESERVED_FEATURE_PREFIXES)}


def test_raw_telemetry_cannot_add_a_feature_column_a_prediction_never_carried(tmp_path: Path) -> None:
    with LakeSink(tmp_path) as sink:
        sink(message(predicted(1, {"temp": 1.0}), module="inference", output="predictions"))
        for seq in range(2, 102):  # 100 raw readings, each with a name no bundle knows
            sink(message({**reading(seq), "features": {"temp": 2.0, f"junk_{seq}": 1.0}}))

    assert lake_features(tmp_path) == {"temp"}
    lake = pd.read_parquet(tmp_path)
    assert len(lake) == 101  # every raw reading is still a row, with the features the lake has
    assert sink.stats()["feature_values_dropped"] == 100


def test_a_predictions_new_feature_becomes_a_column_and_raw_rows_then_keep_it(tmp_path: Path) -> None:
    with LakeSink(tmp_path) as sink:
        sink(message(predicted(1, {"temp": 1.0}), module="inference", output="predictions"))
        sink(message({**reading(2), "features": {"temp": 2.0, "rpm": 900.0}}))  # before a bundle knew rpm
        sink(message(predicted(3, {"temp": 1.0, "rpm": 1000.0}), module="inference", output="predictions"))
        sink(message({**reading(4), "features": {"temp": 2.0, "rpm": 950.0}}))

    lake = pd.read_parquet(tmp_path).set_index("seq")
    assert lake_features(tmp_path) == {"temp", "rpm"}
    assert pd.isna(lake.loc[2, "rpm"]) and lake.loc[4, "rpm"] == 950.0


def test_a_restarted_sink_learns_the_feature_columns_from_the_lakes_files(tmp_path: Path) -> None:
    with LakeSink(tmp_path) as sink:
        sink(message(predicted(1, {"temp": 1.0}), module="inference", output="predictions"))
    with LakeSink(tmp_path) as sink:
        sink(message({**reading(2), "features": {"temp": 2.0, "junk": 1.0}}))

    assert lake_features(tmp_path) == {"temp"}


def test_raw_telemetry_founds_the_columns_of_a_lake_no_prediction_reached_yet(tmp_path: Path) -> None:
    with LakeSink(tmp_path) as sink:
        sink(message({**reading(1), "features": {"temp": 1.0, "rpm": 2.0}}))
        sink(message({**reading(2), "features": {"temp": 1.0, "junk": 2.0}}))

    assert lake_features(tmp_path) == {"temp", "rpm"}


def test_the_lake_holds_at_most_max_feature_columns(tmp_path: Path) -> None:
    features = {f"f{index:02d}": float(index) for index in range(10)}
    with LakeSink(tmp_path, max_feature_columns=4) as sink:
        sink(message(predicted(1, features), module="inference", output="predictions"))

    assert lake_features(tmp_path) == {"f00", "f01", "f02", "f03"}
    assert sink.stats()["feature_values_dropped"] == 6


def test_a_message_is_reported_durable_only_after_the_flush_that_writes_its_rows(tmp_path: Path) -> None:
    durable: list[int] = []
    with LakeSink(tmp_path, flush_every_s=60, flush_rows=1000) as sink:
        sink(message(reading(1)), on_durable=lambda: durable.append(1))
        sink(message({"schema": "edgefleet.batch/1", "readings": [reading(2), reading(3)]}), lambda: durable.append(2))
        assert durable == []  # buffered rows are lost to a kill: the journal upstream must keep them
        sink.flush()
        assert durable == [1, 2]
    assert sorted(pd.read_parquet(tmp_path)["seq"]) == [1, 2, 3]


def test_a_message_that_becomes_side_file_records_is_durable_at_once(tmp_path: Path) -> None:
    durable: list[str] = []
    with LakeSink(tmp_path, flush_every_s=60) as sink:
        sink(message(b"not json"), on_durable=lambda: durable.append("event"))
        sink(message({"schema": "edgefleet.batch/1", "readings": []}), on_durable=lambda: durable.append("dead"))
        assert durable == ["event", "dead"]
        assert jsonl(tmp_path / EVENTS_DIR) and jsonl(tmp_path / DEADLETTER_DIR)


def test_rows_of_a_failed_flush_stay_buffered_and_are_durable_after_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = sink_module.append_to_lake
    calls = []

    def full_disk_once(lake_dir: Path, frame: pd.DataFrame) -> list[Path]:
        calls.append(len(frame))
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_append(lake_dir, frame)

    monkeypatch.setattr(sink_module, "append_to_lake", full_disk_once)
    durable: list[int] = []
    with LakeSink(tmp_path, flush_every_s=60) as sink:
        sink(message(reading(1)), on_durable=lambda: durable.append(1))
        with pytest.raises(OSError, match="No space"):
            sink.flush()
        assert durable == []
        sink(message(reading(2)), on_durable=lambda: durable.append(2))
        sink.flush()
        assert durable == [1, 2]
    assert sorted(pd.read_parquet(tmp_path)["seq"]) == [1, 2]


def test_a_reading_delivered_twice_before_a_flush_becomes_one_row_per_module(tmp_path: Path) -> None:
    prediction = {**reading(1), "prediction": {"anomaly_score": 0.1}}
    with LakeSink(tmp_path, flush_every_s=60) as sink:
        for _ in range(2):  # replayed after a crash upstream
            sink(message(reading(1)))
            sink(message(prediction, module="inference", output="predictions"))
    lake = pd.read_parquet(tmp_path)
    assert sorted(lake["source_module"]) == ["inference", "sensor"]
    assert sink.stats()["duplicate_rows_dropped"] == 2


def test_lake_rows_keep_the_message_id_correlation_id_and_application_properties_of_their_message(
    tmp_path: Path,
) -> None:
    carried = message(
        {"schema": "edgefleet.batch/1", "readings": [reading(1), reading(2)]},
        system_properties={**JSON, "messageId": "m-1", "correlationId": "c-42"},
        properties={"site": "north", "batch": "7"},
    )
    with LakeSink(tmp_path) as sink:
        sink(carried)
        sink(message(reading(3)))  # no ids, no properties

    rows = read_lake(tmp_path).sort_values("seq")

    assert rows["message_id"].fillna("-").tolist() == ["m-1", "m-1", "-"]
    assert rows["correlation_id"].fillna("-").tolist() == ["c-42", "c-42", "-"]
    assert [json.loads(text) for text in rows["properties"]] == [{"batch": "7", "site": "north"}] * 2 + [{}]


def test_the_lake_reads_files_written_before_the_message_columns_existed(tmp_path: Path) -> None:
    old = pd.DataFrame({"device_id": ["dev-1"], "seq": [1], "ts": [pd.Timestamp("2026-11-20T12:00:00Z")]})
    append_to_lake(tmp_path, old.assign(temp=1.0, label=float("nan"), source_module="sensor"))
    with LakeSink(tmp_path) as sink:
        sink(message(reading(2), system_properties={**JSON, "correlationId": "c-2"}))

    rows = read_lake(tmp_path).sort_values("seq")

    assert list(rows["seq"]) == [1, 2]
    assert rows["correlation_id"].isna().tolist() == [True, False]
    assert read_history(tmp_path)[1] == ("temp",)  # the message columns are never training features


def test_the_sink_counts_the_4kb_units_iot_hub_would_meter_for_each_message(tmp_path: Path) -> None:
    small = message(reading(1), properties={"alert": "1"})
    big = message({"schema": "edgefleet.batch/1", "readings": [reading(seq) for seq in range(100)]})
    sizes = [len(m.body) + len("application/json") + len("utf-8") for m in (small, big)]
    sizes[0] += len("alert") + len("1")

    with LakeSink(tmp_path, flush_every_s=60) as sink:
        sink(small)
        sink(big)

    stats = sink.stats()
    assert stats["messages_received"] == 2 and stats["bytes_received"] == sum(sizes)
    assert sizes[1] > 4096 and stats["units_4kb"] == 1 + -(-sizes[1] // 4096)


def compressed(body: object, **kwargs: object) -> Message:
    """Return a prediction batch as the inference module sends it: gzip, declared in contentEncoding."""
    raw, encoding = compress_body(json.dumps(body).encode())
    assert encoding == "gzip"
    system = {"contentType": "application/json", "contentEncoding": encoding}
    return message(raw, module="inference", output="predictions", system_properties=system, **kwargs)


def test_a_compressed_prediction_batch_lands_as_the_same_rows_as_the_plain_one(tmp_path: Path) -> None:
    batch = {"schema": "edgefleet.batch/1", "readings": [predicted(seq, {"temp": seq / 2}) for seq in range(40)]}
    plain_dir, gzip_dir = tmp_path / "plain", tmp_path / "gzip"
    properties = {"schema": "edgefleet.batch/1"}

    with LakeSink(plain_dir) as sink:
        sink(message(batch, module="inference", output="predictions", properties=properties))
    with LakeSink(gzip_dir) as sink:
        sink(compressed(batch, properties=properties))

    plain = read_lake(plain_dir).sort_values("seq").reset_index(drop=True)
    opened = read_lake(gzip_dir).sort_values("seq").reset_index(drop=True)
    assert len(opened) == 40
    pd.testing.assert_frame_equal(plain, opened)
    assert not (gzip_dir / DEADLETTER_DIR).exists() and not (gzip_dir / EVENTS_DIR).exists()


def test_a_lake_of_plain_and_compressed_messages_reads_as_one(tmp_path: Path) -> None:
    with LakeSink(tmp_path) as sink:
        sink(message(predicted(1, {"temp": 1.0}), module="inference", output="predictions"))  # before compression
        sink(compressed({"schema": "edgefleet.batch/1", "readings": [predicted(2, {"temp": 2.0})]}))

    assert sorted(read_lake(tmp_path)["seq"]) == [1, 2]


def test_a_corrupt_compressed_body_is_dead_lettered_with_its_reason_and_the_sink_goes_on(tmp_path: Path) -> None:
    good = compressed({"schema": "edgefleet.batch/1", "readings": [predicted(5, {"temp": 5.0})]})
    broken = message(
        good.body[: len(good.body) // 2],
        module="inference",
        output="predictions",
        system_properties=good.system_properties,
    )
    durable: list[str] = []

    with LakeSink(tmp_path) as sink:
        sink(broken, lambda: durable.append("broken"))
        sink(good)

    (dead,) = jsonl(tmp_path / DEADLETTER_DIR)
    assert dead["reason"] == "bad_encoding" and "truncated" in dead["detail"]
    assert dead["source"] == "inference/predictions"
    assert durable == ["broken"]  # kept in the side file: nothing left for the journal to replay
    assert list(read_lake(tmp_path)["seq"]) == [5]
    assert sink.stats()["deadletters"] == 1


def test_the_sink_meters_a_compressed_message_at_its_compressed_size(tmp_path: Path) -> None:
    batch = {"schema": "edgefleet.batch/1", "readings": [predicted(seq, {"temp": 1.0}) for seq in range(100)]}
    sent = compressed(batch, properties={"schema": "edgefleet.batch/1"})
    plain_size = len(json.dumps(batch).encode())

    with LakeSink(tmp_path, flush_every_s=60) as sink:
        sink(sent)

    size = len(sent.body) + len("application/json") + len("gzip") + len("schema") + len("edgefleet.batch/1")
    stats = sink.stats()
    assert stats["bytes_received"] == size and size * 4 < plain_size
    assert stats["units_4kb"] == -(-size // 4096) < -(-plain_size // 4096)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_rolling_flushes_append_to_one_file_per_day_that_appears_when_it_rolls(tmp_path: Path) -> None:
    clock, durable = FakeClock(), []
    sink = LakeSink(tmp_path, flush_every_s=5, flush_rows=10, roll_every_s=60, clock=clock, tick=False)
    try:
        for seq in range(100):  # ten flushes of ten rows, over 50 simulated seconds
            sink(message(reading(seq, day="2026-11-20" if seq < 95 else "2026-11-21")), lambda s=seq: durable.append(s))
            clock.now_s += 0.5
        sink.tick_once()
        assert sink.stats()["rows_written"] == 100
        assert read_lake(tmp_path).empty and durable == []  # in the open files: invisible, not yet durable
        assert len(list(tmp_path.glob("date=*/.rolling-*.parquet.tmp"))) == 2

        clock.now_s += 60
        sink.tick_once()

        days = sorted(p.parent.name for p in tmp_path.glob("date=*/*.parquet"))
        assert days == ["date=2026-11-20", "date=2026-11-21"]
        assert sorted(read_lake(tmp_path)["seq"]) == list(range(100)) and sorted(durable) == list(range(100))
        assert sink.stats()["files_written"] == 2
    finally:
        sink.close()


def test_a_rolling_file_rolls_at_its_size_and_on_close(tmp_path: Path) -> None:
    with LakeSink(tmp_path, flush_every_s=60, flush_rows=50, roll_every_s=3600, roll_bytes=8_000, tick=False) as sink:
        for seq in range(1000):
            sink(message(reading(seq)))
        rolled = sink.stats()["files_written"]
    assert 1 < rolled < 20  # 20 flushes, a few files
    assert sink.stats()["files_written"] == rolled + 1  # close() rolled the open one
    assert sorted(read_lake(tmp_path)["seq"]) == list(range(1000))
    assert not list(tmp_path.glob("date=*/.rolling-*"))


def test_roll_now_makes_young_open_files_visible_and_their_messages_durable(tmp_path: Path) -> None:
    clock, durable = FakeClock(), []
    sink = LakeSink(tmp_path, flush_every_s=5, flush_rows=10, roll_every_s=60, clock=clock, tick=False)
    try:
        for seq in range(10):
            sink(message(reading(seq)), lambda s=seq: durable.append(s))
        assert read_lake(tmp_path).empty and durable == []
        rolled = sink.roll_now()
        assert len(rolled) == 1 and sorted(read_lake(tmp_path)["seq"]) == list(range(10))
        assert sorted(durable) == list(range(10)) and sink.roll_now() == []
    finally:
        sink.close()


def test_a_new_feature_column_rolls_the_open_file_and_both_files_read_back(tmp_path: Path) -> None:
    with LakeSink(tmp_path, flush_every_s=60, flush_rows=1, roll_every_s=3600, tick=False) as sink:
        sink(message(reading(1)))
        prediction = {**reading(2), "features": {"temp": 2.0, "wind": 3.0}, "prediction": {"value": 1.0}}
        sink(message(prediction, module="inference", output="predictions"))
        sink(message(reading(3)))  # raw telemetry without wind: nulls in the new file
        assert sink.stats()["files_written"] == 1

    lake = read_lake(tmp_path).sort_values("seq")
    assert len(list(tmp_path.glob("date=*/*.parquet"))) == 2
    assert lake["wind"].tolist()[1] == 3.0 and lake["wind"].isna().sum() == 2


def test_a_sink_starting_removes_the_open_files_a_killed_one_left(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, flush_every_s=60, flush_rows=1, roll_every_s=3600, tick=False)
    sink(message(reading(1)))
    left = list(tmp_path.glob("date=*/.rolling-*.parquet.tmp"))
    assert len(left) == 1  # the process "dies" here: never closed

    with LakeSink(tmp_path, roll_every_s=60, tick=False):
        assert not left[0].exists()
