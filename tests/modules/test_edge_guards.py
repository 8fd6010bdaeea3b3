"""The edge's guards, real processes: bad dates, borrowed topics, invented features and seq jumps stay out."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from edgefleet.bundle import read_manifest
from edgefleet.field import field_topic
from edgefleet.lake import BOOKKEEPING_COLUMNS
from tests.edge_fixtures import deadletters, lake_rows, reading, ts_text, wait_for


def test_bad_dates_borrowed_topics_new_feature_names_and_a_seq_jumping_impostor_never_reach_the_lake(
    start_edge, publisher_factory, small_bundle
):
    manifest = read_manifest(small_bundle)
    genuine, chatty = sorted(d for d, e in manifest.devices.items() if e.kind == "device")[:2]
    now = datetime.now(UTC).replace(microsecond=0)
    today = ts_text(now)
    edge = start_edge()
    publisher = publisher_factory(edge)

    # The genuine device first, so the lake knows the bundle's features from its predictions.
    publisher.publish_all(reading(genuine, seq, ts=today) for seq in range(1, 11))
    publisher.wait_acked()
    wait_for(lambda: (lake_rows(edge)["source_module"] == "inference").sum() >= 10)

    publisher.publish(reading(genuine, 11, ts="1970-01-01T00:00:00Z"))  # a clock that lost its battery
    publisher.publish(reading(genuine, 12, ts="2261-06-01T00:00:00Z"))  # a clock set to nonsense
    publisher.publish(reading("impostor", 1, ts=today), topic=field_topic(genuine))  # another device's topic
    # 100 readings, each with a feature name no bundle has ever seen.
    publisher.publish_all(
        reading(chatty, seq, ts=today, features={**reading(chatty, seq)["features"], f"never_seen_{seq}": 1.0})
        for seq in range(1, 101)
    )
    # A second publisher using the genuine device's id and topic, far ahead; then the real device goes on.
    publisher.publish(reading(genuine, 10**9, ts=today))
    publisher.publish_all(reading(genuine, seq, ts=today) for seq in range(13, 63))
    publisher.wait_acked()

    def settled():
        rows = lake_rows(edge)
        predicted = rows[rows["source_module"] == "inference"]
        dead = [d for d in deadletters(edge) if d.get("source", "").startswith("sensor/")]
        return (rows, predicted, dead) if len(predicted) >= 161 and len(dead) >= 3 else None

    rows, predicted, dead = wait_for(settled)
    assert Counter(d["reason"] for d in dead) == {"bad_timestamp": 2, "device_mismatch": 1}
    window_detail = next(d["detail"] for d in dead if d["reason"] == "bad_timestamp")
    assert "7 d old, 5 min ahead" in window_detail
    mismatch = next(d["detail"] for d in dead if d["reason"] == "device_mismatch")
    assert "'impostor'" in mismatch and repr(genuine) in mismatch

    served = set(zip(predicted["device_id"], predicted["seq"], strict=True))
    expected = {(genuine, s) for s in [*range(1, 11), *range(13, 63)]} | {(chatty, s) for s in range(1, 101)}
    assert expected <= served  # every genuine reading predicted
    assert (genuine, 11) not in served and (genuine, 12) not in served

    assert sorted(p.name for p in edge.lake_dir.glob("date=*")) == [f"date={now:%Y-%m-%d}"]
    fixed = {"device_id", "seq", "ts", "label", *BOOKKEEPING_COLUMNS}
    assert set(rows.columns) - fixed == set(manifest.features)

    _, sensor = edge.method("sensor", "stats")
    assert isinstance(sensor, dict)
    assert (sensor["seq_jumps"], sensor["seq_duplicates"]) == (1, 0)
    _, inference = edge.method("inference", "stats")
    assert isinstance(inference, dict) and inference["unknown_features"] == 100
    reported = wait_for(lambda: edge.standin.router.twin("inference")["reported"].get("unknownFeatureNames"))
    assert reported == [f"never_seen_{seq}" for seq in range(1, 11)]
