"""The whole edge path with real parts: field MQTT → sensor → stand-in routes → inference → lake."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import timedelta

from edgefleet.bundle import read_manifest
from edgefleet.deployment import parse_deployment
from tests.edge_fixtures import READINGS_START, deadletters, events, lake_rows, reading, wait_for


def _predictions(edge, expected: int):
    def check():
        rows = lake_rows(edge)
        rows = rows[rows["source_module"] == "inference"]
        return (rows,) if len(rows) >= expected else None

    (rows,) = wait_for(check)
    return rows


def test_reading_on_the_field_broker_reaches_the_lake_predicted_by_its_device_model(
    start_edge, publisher_factory, small_bundle
):
    manifest = read_manifest(small_bundle)
    trained = sorted(d for d, e in manifest.devices.items() if e.kind == "device")
    edge = start_edge()
    publisher = publisher_factory(edge)
    publisher.publish_all(reading(device, seq) for device in trained for seq in range(5))
    publisher.wait_acked()

    rows = _predictions(edge, len(trained) * 5)
    assert set(rows["device_id"]) == set(trained)
    assert set(rows["prediction_model"]) == {"device"}
    assert rows["prediction_fallback_reason"].isna().all()
    assert (rows["prediction_model_version"] == manifest.bundle_version).all()
    assert (rows["edge_device"] == "edge1").all()
    assert (rows["edge_latency_ms"] >= 0).all()
    # Each prediction carries its reading: the raw telemetry route is an opt-in, off in the template.
    assert (lake_rows(edge)["source_module"] == "inference").all()


def test_unknown_poor_and_incomplete_devices_get_the_fleet_model_with_the_reason(
    start_edge, publisher_factory, small_bundle
):
    manifest = read_manifest(small_bundle)
    trained = sorted(d for d, e in manifest.devices.items() if e.kind == "device")
    poor = next(d for d, e in manifest.devices.items() if e.status == "fallback")
    skipped = next(d for d, e in manifest.devices.items() if e.status in ("skipped", "failed"))
    edge = start_edge()
    publisher = publisher_factory(edge)
    publisher.publish(reading("never-seen-device", 1))
    publisher.publish(reading(poor, 1))
    publisher.publish(reading(skipped, 1))
    publisher.publish(reading(trained[0], 1, features={"temperature_c": 20.0, "humidity_pct": 41.0}))
    publisher.wait_acked()

    rows = _predictions(edge, 4).set_index("device_id")
    assert set(rows["prediction_model"]) == {"fleet"}
    assert rows.loc["never-seen-device", "prediction_fallback_reason"] == "no_model"
    assert rows.loc[poor, "prediction_fallback_reason"] == "poor_model"
    assert rows.loc[skipped, "prediction_fallback_reason"] == "no_model"
    assert rows.loc[trained[0], "prediction_fallback_reason"] == "missing_features"


def test_where_route_filters_dead_letters_by_reason(start_edge, publisher_factory, deployment):
    raw = json.loads(json.dumps(deployment.raw))
    routes = raw["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    del routes["sensorDeadlettersToUpstream"]
    routes["onlyOversizeDeadletters"] = (
        "FROM /messages/modules/sensor/outputs/deadletter WHERE reason = 'oversize' INTO $upstream"
    )
    # Small batches, so that a reading of 250 features (~7 KB) is too big for one: `oversize`.
    raw["modulesContent"]["sensor"]["properties.desired"]["maxBatchBytes"] = 4000
    edge = start_edge(deployment=parse_deployment(raw))
    publisher = publisher_factory(edge)
    publisher.publish(b"not json at all", topic="fleet/broken/telemetry")
    big = reading("dev-big", 1, features={f"feature_{i:04d}": i + 0.123456789 for i in range(250)})
    publisher.publish(json.dumps(big).encode() + b" " * 5000, topic="fleet/dev-big/telemetry")
    publisher.wait_acked()

    def sensor_dead():
        _status, stats = edge.method("sensor", "stats")
        return stats if sum(stats["deadletters"].values()) >= 2 else None

    stats = wait_for(sensor_dead)
    assert stats["deadletters"] == {"not_json": 1, "oversize": 1}
    records = wait_for(lambda: deadletters(edge))
    edge.standin.router.wait_ready()
    assert [record["reason"] for record in records] == ["oversize"]


def test_desired_patch_changes_the_poor_model_threshold_while_running(start_edge, publisher_factory, small_bundle):
    manifest = read_manifest(small_bundle)
    device = sorted(d for d, e in manifest.devices.items() if e.kind == "device")[0]
    edge = start_edge()
    publisher = publisher_factory(edge)
    publisher.publish(reading(device, 1))
    publisher.wait_acked()
    assert _predictions(edge, 1).iloc[0]["prediction_model"] == "device"

    # 0.0: no device model may have any error the fleet model lacks, so all go to the fleet.
    edge.standin.router.apply_desired_patch("inference", {"poorModelThreshold": 0.0})
    wait_for(lambda: edge.standin.router.twin("inference")["reported"].get("poorModelThreshold") == 0.0)
    publisher.publish(reading(device, 2))
    publisher.wait_acked()
    rows = _predictions(edge, 2).set_index("seq")
    assert rows.loc[2, "prediction_model"] == "fleet"
    assert rows.loc[2, "prediction_fallback_reason"] == "poor_model"


def test_manifest_desired_properties_reach_both_modules_and_a_bad_patch_is_reported(start_edge, bundle_version):
    edge = start_edge()
    router = edge.standin.router
    sensor = wait_for(lambda: router.twin("sensor")["reported"].get("counters") and router.twin("sensor")["reported"])
    assert sensor["batchWindowMs"] == 200
    assert sensor["fieldTopic"] == "fleet/+/telemetry"
    # Each module reports once it is up: on a loaded machine inference may start after the sensor.
    inference = wait_for(
        lambda: router.twin("inference")["reported"].get("bundleVersion") and router.twin("inference")["reported"]
    )
    assert inference["bundleVersion"] == bundle_version
    assert inference["bundleStatus"] == "ok"

    router.apply_desired_patch("sensor", {"batchWindowMs": -5})
    reported = wait_for(lambda: router.twin("sensor")["reported"].get("configError"))
    assert "batchWindowMs" in reported
    assert router.twin("sensor")["reported"]["batchWindowMs"] == 200


def test_sensor_disabled_by_a_desired_patch_stops_forwarding_until_enabled(start_edge, publisher_factory):
    edge = start_edge()
    router = edge.standin.router
    router.apply_desired_patch("sensor", {"enabled": False})
    wait_for(lambda: edge.method("sensor", "stats")[1]["subscribed"] is None)
    publisher = publisher_factory(edge)
    publisher.publish(reading("dev-x", 1))
    publisher.wait_acked()
    router.apply_desired_patch("sensor", {"enabled": True})
    wait_for(lambda: edge.method("sensor", "stats")[1]["subscribed"] == "fleet/+/telemetry")
    publisher.publish(reading("dev-x", 2))
    publisher.wait_acked()
    rows = _predictions(edge, 1)
    assert list(rows["seq"]) == [2]


def _fuzzed(rng: random.Random, index: int) -> bytes:
    good = reading(f"dev-fuzz-{index % 7}", index)
    kind = index % 10
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return json.dumps(good).encode()[: rng.randrange(1, 60)]
    if kind == 2:
        return json.dumps([good]).encode()
    if kind == 3:
        return json.dumps({**good, "schema": "edgefleet.telemetry/9"}).encode()
    if kind == 4:
        return json.dumps({**good, "seq": "seven"}).encode()
    if kind == 5:
        return json.dumps(good).replace('"load_pct": 55.0', '"load_pct": NaN').encode()
    if kind == 6:
        return json.dumps({**good, "features": {"temperature_c": "hot"}}).encode()
    if kind == 7:
        return json.dumps({**good, "ts": "yesterday"}).encode()
    if kind == 8:
        dropped = rng.choice(list(good))
        return json.dumps({key: value for key, value in good.items() if key != dropped}).encode()
    return b'{"schema": "edgefleet.batch/1", "readings": []}'


def test_a_thousand_fuzzed_messages_are_each_dead_lettered_and_the_modules_keep_working(
    start_edge, publisher_factory, small_bundle
):
    manifest = read_manifest(small_bundle)
    device = sorted(d for d, e in manifest.devices.items() if e.kind == "device")[0]
    edge = start_edge()
    publisher = publisher_factory(edge)
    rng = random.Random(5)
    payloads = [_fuzzed(rng, index) for index in range(1200)]
    for payload in payloads:
        publisher.publish(payload, topic="fleet/fuzz/telemetry")
    publisher.publish(reading(device, 1))
    publisher.wait_acked()

    def all_dead():
        records = deadletters(edge)
        return records if len(records) >= len(payloads) else None

    records = wait_for(all_dead, timeout_s=60)
    assert len(records) == len(payloads)
    reasons = Counter(record["reason"] for record in records)
    assert set(reasons) <= {
        "not_json", "not_utf8", "not_object", "wrong_schema", "missing_field", "wrong_type",
        "non_finite", "bad_timestamp", "empty_batch",
    }  # fmt: skip
    assert all(record["source"] == "sensor/fleet/fuzz/telemetry" and record["detail"] for record in records)
    assert _predictions(edge, 1).iloc[0]["device_id"] == device
    assert edge.processes["sensor"].running() and edge.processes["inference"].running()


def test_inference_dead_letters_malformed_messages_sent_to_its_input(start_edge):
    edge = start_edge()
    router = edge.standin.router
    # Something other than our sensor writes to the inference input: bad bodies must not crash it.
    from edgefleet.routes import Message

    for body in (b"\xff\xfe", b"[]", b'{"schema":"edgefleet.batch/1","readings":[{"schema":"edgefleet.telemetry/1"}]}'):
        router._deliver(
            next(r.sink for r in edge.deployment.routes if r.name == "sensorToInference"),
            Message("edge1", "sensor", "telemetry", {}, {"contentType": "application/json"}, body),
            None,
            time.time(),
            0,
            60.0,
        )
    stats = wait_for(lambda: (s := edge.method("inference", "stats")[1]) and sum(s["deadletters"].values()) >= 3 and s)
    assert stats["deadletters"] == {"not_utf8": 1, "not_object": 1, "missing_field": 1}
    assert edge.processes["inference"].running()


def test_a_module_started_before_edgehub_waits_for_it_instead_of_crashing(start_edge, publisher_factory, small_bundle):
    edge = start_edge()
    edge.processes["inference"].stop()
    edge.standin.stop()  # edgeHub down: its certificates stay on disk, as on a device
    edge.start_module("inference", wait=False)
    time.sleep(3.0)  # the module retries meanwhile
    assert edge.processes["inference"].running(), edge.processes["inference"].log_tail()
    edge.standin.start()
    edge.wait_module_ready("inference", timeout_s=60)
    edge.wait_module_ready("sensor", timeout_s=60)
    assert "edgeHub not reachable" in edge.processes["inference"].log_tail(20000)
    assert "Traceback" not in edge.processes["inference"].log_tail(20000)


def test_a_device_whose_labels_no_longer_fit_its_model_raises_one_drift_alert_and_a_stable_one_none(
    start_edge, publisher_factory, small_bundle
):
    from tests.conftest import FEATURES, fleet_history

    manifest = read_manifest(small_bundle)
    drifted, stable = sorted(d for d, e in manifest.devices.items() if e.kind == "device")[:2]
    history = fleet_history(6, 240, seed=11)  # the rows small_bundle was trained on
    stable_rows = history[history["device_id"] == stable].tail(120)
    edge = start_edge()
    publisher = publisher_factory(edge)
    for seq, (_, row) in enumerate(stable_rows.iterrows()):
        features = {name: float(row[name]) for name in FEATURES}
        publisher.publish(reading(stable, seq, features=features, label=float(row["label"])))
        # the drifted device: the same inputs, but its label relation has moved far away
        publisher.publish(reading(drifted, seq, features=features, label=float(row["label"]) + 50.0))
    publisher.wait_acked()
    _predictions(edge, 240)

    def drift_alerts():
        alerts = [record["body"] for record in events(edge)]
        return [a for a in alerts if isinstance(a, dict) and a.get("kind") == "drift"]

    alerts = wait_for(drift_alerts)
    time.sleep(1.0)  # no second alert follows for the same device (hysteresis)
    alerts = drift_alerts()
    assert [a["device_id"] for a in alerts] == [drifted]
    assert alerts[0]["drift"]["kind"] == "residual"
    reported = wait_for(lambda: edge.standin.router.twin("inference")["reported"].get("drift", {}).get("drifting"))
    assert reported == [drifted]


def test_a_device_whose_inputs_moved_away_from_its_training_data_raises_one_feature_drift_alert(
    start_edge, publisher_factory, tmp_path
):
    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally
    from simulator.history import HistorySpec, generate_history
    from tests.conftest import END_TS_S, FEATURES

    # 480 readings every 300 s (40 hours): training stores each device's feature distribution.
    history = generate_history(HistorySpec(n_devices=3, rows_per_device=480, seed=5))
    config = TrainingConfig(features=FEATURES, reference_ts_s=END_TS_S, fleet_rows_per_device=200)
    results, fleet = train_fleet_locally((g for _, g in history.groupby("device_id")), config)
    manifest = write_bundle(tmp_path / "bundle", results, fleet, config)
    assert all(entry.feature_reference for entry in manifest.devices.values())
    stable, moved, moved_without_vibration = sorted(manifest.devices)
    edge = start_edge(
        bundle_dir=tmp_path / "bundle",
        desired_overrides={"inference": {"expectedBundleVersion": manifest.bundle_version}},
    )
    publisher = publisher_factory(edge)
    start = READINGS_START
    for device_id in (stable, moved, moved_without_vibration):
        rows = history[history["device_id"] == device_id]
        for seq, (_, row) in enumerate(rows.iterrows()):
            features = {name: float(row[name]) for name in FEATURES}
            if device_id != stable:
                features["temperature_c"] += 8.0  # the device now stands somewhere warmer
            if device_id == moved_without_vibration:
                # Its vibration sensor is gone: the fleet model serves it on a filled-in value, and
                # the features it still sends are judged.
                del features["vibration_mm_s"]
            # One reading per 216 s slot: 480 readings fill the one-day feature window and go past it.
            ts = (start + timedelta(seconds=216 * seq)).isoformat().replace("+00:00", "Z")
            publisher.publish(reading(device_id, seq, features=features, ts=ts))
    publisher.wait_acked()
    _predictions(edge, 3 * 480)

    def drift_alerts():
        return [body for body in (record["body"] for record in events(edge)) if body.get("kind") == "drift"]

    alerts = wait_for(drift_alerts)
    time.sleep(1.0)  # no second alert follows (hysteresis)
    alerts = drift_alerts()
    assert sorted((a["device_id"], a["drift"]["kind"], a["drift"]["feature"]) for a in alerts) == [
        (moved, "feature", "temperature_c"),
        (moved_without_vibration, "feature", "temperature_c"),
    ]
    assert all(a["drift"]["value"] >= 0.25 and a["drift"]["window_readings"] == 400 for a in alerts)

    def drifting():
        reported = edge.standin.router.twin("inference")["reported"].get("drift", {}).get("drifting") or []
        return reported if len(reported) == 2 else None

    reported = wait_for(drifting)
    assert reported == [moved, moved_without_vibration]
