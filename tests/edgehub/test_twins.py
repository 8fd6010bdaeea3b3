"""Module twins are kept in the stand-in's state dir: real Mosquitto, the real SDK in module processes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edgehub.twins import TwinError, TwinStore

from .conftest import StartEdge, wait_for


def test_reported_and_desired_properties_survive_a_standin_restart_with_their_versions(start_edge: StartEdge) -> None:
    edge = start_edge({}, desired={"sensor": {"batchWindowMs": 200}})
    edge["sensor"].request("patch_reported", patch={"counters": {"sent": 7}})
    edge["sensor"].request("patch_reported", patch={"enabled": True})
    edge.standin.router.apply_desired_patch("sensor", {"batchWindowMs": 100})
    wait_for(lambda: edge["sensor"].request("patches")["patches"])
    before = edge.standin.router.twin("sensor")
    for process in edge.modules.values():
        process.close()
    edge.standin.stop()

    again = start_edge({}, desired={"sensor": {"batchWindowMs": 200}})
    twin = again["sensor"].request("get_twin")["twin"]

    assert before == {
        "desired": {"batchWindowMs": 100, "$version": 2},
        "reported": {"counters": {"sent": 7}, "enabled": True, "$version": 3},
    }
    assert twin == before  # what the SDK reads after the restart
    assert again.standin.router.twin("inference") == {"desired": {"$version": 1}, "reported": {"$version": 1}}


def test_a_new_manifest_desired_set_replaces_operator_patches_under_a_higher_version(tmp_path: Path) -> None:
    folder = tmp_path / "twins"
    first = TwinStore(["sensor"], {"sensor": {"batchWindowMs": 200, "enabled": True}}, folder)
    first.apply_desired("sensor", {"batchWindowMs": 100})
    first.apply_reported("sensor", {"enabled": True})

    unchanged = TwinStore(["sensor"], {"sensor": {"batchWindowMs": 200, "enabled": True}}, folder)
    assert unchanged.document("sensor")["desired"] == {"batchWindowMs": 100, "enabled": True, "$version": 2}

    redeployed = TwinStore(["sensor"], {"sensor": {"batchWindowMs": 500}}, folder)
    assert redeployed.document("sensor") == {
        "desired": {"batchWindowMs": 500, "$version": 3},
        "reported": {"enabled": True, "$version": 2},
    }
    # The next start with the same manifest keeps what the last deployment set.
    assert (
        TwinStore(["sensor"], {"sensor": {"batchWindowMs": 500}}, folder).document("sensor")["desired"]["$version"] == 3
    )


def test_twin_files_are_private_and_a_damaged_one_stops_the_start_saying_how_to_fix_it(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "twins"
    TwinStore(["sensor"], {"sensor": {"a": 1}}, folder).apply_reported("sensor", {"b": 2})

    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "sensor.json").stat().st_mode) == 0o600
    assert json.loads((folder / "sensor.json").read_text())["reported"] == {"b": 2}
    (folder / "sensor.json").write_text('{"desired": ')
    with pytest.raises(TwinError, match=r"delete .*sensor\.json to start sensor's twin again from the manifest"):
        TwinStore(["sensor"], {"sensor": {"a": 1}}, folder)
