"""Desired properties with real processes: a bad patch is refused and reported, and survives a sensor restart."""

from __future__ import annotations

import stat
from pathlib import Path

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


def test_what_a_running_edge_keeps_on_disk_is_readable_by_its_owner_only(start_edge, publisher_factory):
    edge = start_edge()
    publisher = publisher_factory(edge)
    publisher.publish(reading("dev-modes", 1))
    publisher.wait_acked()
    assert _predicted_seqs(edge, 1) == [1]

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for module in ("sensor", "inference"):
        state = edge.workdir / f"{module}-state"
        assert mode(state) == mode(state / "journal") == 0o700, module
        assert mode(state / "desired.json") == 0o600, module
    assert mode(edge.workdir / "edgehub") == mode(edge.workdir / "edgehub" / "certs") == 0o700
    assert {mode(key) for key in (edge.workdir / "edgehub" / "certs").glob("*.key")} == {0o600}
    assert mode(edge.workdir / "edgehub" / "public" / "ca.pem") == 0o644  # what modules trust: public
    parquet = list(edge.lake_dir.glob("date=*/*.parquet"))
    assert parquet and {mode(path) for path in parquet} == {0o600}
    assert mode(edge.lake_dir) == 0o700
    assert {mode(log) for log in (edge.workdir / "logs").glob("*.log")} == {0o600}
