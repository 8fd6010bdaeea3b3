"""Where the stand-in process sends `$upstream`: the sink service when one is named, else the lake here."""

from __future__ import annotations

from pathlib import Path

from edgefleet.hub_wire import HUB_PUBLISHER_USER
from edgehub.hub import HubPublisher
from edgehub.serve import open_upstream
from edgehub.settings import EdgeHubSettings
from edgehub.sink import LakeSink
from tests.hub_logins import HubLogins

TEMPLATE = Path(__file__).resolve().parents[2] / "deployment" / "deployment.template.json"


def test_upstream_goes_to_the_sink_services_broker_when_one_is_named(tmp_path: Path, hub_logins: HubLogins) -> None:
    settings = EdgeHubSettings(
        deployment=TEMPLATE,
        lake_dir=tmp_path / "lake",
        upstream_mqtt="127.0.0.1:9",
        upstream_password_file=hub_logins.password_file(),
    )

    upstream = open_upstream(settings)
    try:
        assert isinstance(upstream, HubPublisher)
        assert (upstream.host, upstream.port) == ("127.0.0.1", 9)
        assert upstream.username == HUB_PUBLISHER_USER
    finally:
        upstream.close(timeout_s=0)
    assert not (tmp_path / "lake").exists()


def test_upstream_is_a_lake_writer_in_this_process_otherwise(tmp_path: Path) -> None:
    settings = EdgeHubSettings(deployment=TEMPLATE, lake_dir=tmp_path / "lake", flush_every_s=0.5)

    upstream = open_upstream(settings)
    try:
        assert isinstance(upstream, LakeSink)
        assert upstream.lake_dir == tmp_path / "lake" and upstream.flush_every_s == 0.5
        assert upstream.healthy()
    finally:
        upstream.close()
    assert not upstream.healthy()
