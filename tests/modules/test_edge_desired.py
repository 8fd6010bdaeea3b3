"""Desired properties with real processes: a bad patch is refused and reported, and survives a sensor restart."""

from __future__ import annotations

from edgefleet.field import FIELD_TOPIC_FILTER
from tests.edge_fixtures import lake_rows, reading, wait_for


def _predicted_seqs(edge, expected: int) -> list[int]:
    def check():
        rows = lake_rows(edge)
        seqs = sorted(rows[rows["source_module"] == "inference"]["seq"])
        return seqs if len(seqs) >= expected else None

    return wait_for(check)


def test_a_patch_with_enabled_no_is_refused_and_the_sensor_keeps_its_last_good_values_across_a_restart(
    start_edge, publisher_factory
):
    edge = start_edge()
    router = edge.standin.router
    publisher = publisher_factory(edge)

    router.apply_desired_patch("sensor", {"enabled": "no"})
    error = wait_for(lambda: router.twin("sensor")["reported"].get("configError"))
    assert "enabled" in error and "true or false" in error
    assert router.twin("sensor")["reported"]["enabled"] is True
    publisher.publish(reading("dev-cfg", 1))
    publisher.wait_acked()
    assert _predicted_seqs(edge, 1) == [1]  # ingestion goes on

    # The twin now holds the refused value: a restarted sensor runs with the last set it accepted.
    assert router.twin("sensor")["desired"]["enabled"] == "no"
    edge.processes["sensor"].stop()
    edge.start_module("sensor")  # waits until the sensor has subscribed
    assert edge.method("sensor", "stats")[1]["subscribed"] == FIELD_TOPIC_FILTER
    error = wait_for(
        lambda: (
            "last good values" in (router.twin("sensor")["reported"].get("configError") or "")
            and router.twin("sensor")["reported"]["configError"]
        )
    )
    assert "enabled" in error
    publisher.publish(reading("dev-cfg", 2))
    publisher.wait_acked()
    assert _predicted_seqs(edge, 2) == [1, 2]
