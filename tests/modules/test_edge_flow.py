"""The whole edge path with real parts: field MQTT → sensor → stand-in routes → inference → lake."""

from __future__ import annotations

from tests.modules.conftest import lake_rows, reading, wait_for


def test_reading_on_the_field_broker_reaches_the_lake_predicted_by_its_device_model(start_edge, publisher_factory, small_bundle):
    from edgefleet.bundle import read_manifest

    manifest = read_manifest(small_bundle)
    trained = sorted(d for d, e in manifest.devices.items() if e.status == "trained")
    edge = start_edge()
    publisher = publisher_factory(edge)
    publisher.publish_all(reading(device, seq) for device in trained for seq in range(5))
    publisher.publish(reading("never-seen-device", 1))
    publisher.wait_acked()

    def predictions():
        rows = lake_rows(edge)
        rows = rows[rows["source_module"] == "inference"]
        return (rows,) if len(rows) >= len(trained) * 5 + 1 else None

    (rows,) = wait_for(predictions)
    own = rows[rows["device_id"].isin(trained)]
    assert set(own["prediction_model"]) == {"device"}
    assert own["prediction_fallback_reason"].isna().all()
    unknown = rows[rows["device_id"] == "never-seen-device"].iloc[0]
    assert unknown["prediction_model"] == "fleet"
    assert unknown["prediction_fallback_reason"] == "no_model"
