"""`edgefleet hub ...` operates a running stand-in through its control socket: real Mosquitto, the real SDK."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from edgefleet_cli.cli import main

from .conftest import Edge, StartEdge, wait_for


def hub(capsys: pytest.CaptureFixture[str], edge: Edge, *args: str) -> tuple[int, dict | None, str]:
    """Run `edgefleet hub ARGS --state-dir <the edge's>`; return the exit code, the printed JSON, stderr."""
    capsys.readouterr()
    code = main(["hub", *args, "--state-dir", str(edge.standin.state_dir)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_the_cli_shows_a_module_twin_as_az_iot_hub_does(
    start_edge: StartEdge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = start_edge({}, desired={"sensor": {"batchWindowMs": 200}})
    edge["sensor"].request("patch_reported", patch={"batchWindowMs": 200})

    code, twin, _ = hub(capsys, edge, "module-twin", "show", "--module-id", "sensor")

    assert code == 0
    assert twin == {
        "deviceId": "edge1",
        "moduleId": "sensor",
        "connectionState": "Connected",
        "properties": {
            "desired": {"batchWindowMs": 200, "$version": 1},
            "reported": {"batchWindowMs": 200, "$version": 2},
        },
    }


def test_a_desired_patch_from_the_cli_reaches_the_sdk_module_and_the_twin(
    start_edge: StartEdge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    edge = start_edge({}, desired={"sensor": {"batchWindowMs": 200, "enabled": True}})
    patch_file = tmp_path / "patch.json"
    patch_file.write_text('{"enabled": null}')

    code, twin, _ = hub(
        capsys, edge, "module-twin", "update", "--module", "sensor", "--desired", '{"batchWindowMs": 100}'
    )
    code_file, twin_file, _ = hub(capsys, edge, "module-twin", "update", "-m", "sensor", "--desired", f"@{patch_file}")

    assert code == code_file == 0
    assert twin is not None and twin["properties"]["desired"] == {"batchWindowMs": 100, "enabled": True, "$version": 2}
    assert twin_file is not None and twin_file["properties"]["desired"] == {"batchWindowMs": 100, "$version": 3}
    patches = wait_for(
        lambda: len(edge["sensor"].request("patches")["patches"]) == 2 and edge["sensor"].request("patches")
    )
    assert patches["patches"] == [{"batchWindowMs": 100, "$version": 2}, {"enabled": None, "$version": 3}]
    assert edge["inference"].request("patches")["patches"] == []


def test_the_cli_invokes_a_method_on_an_sdk_module_and_prints_its_answer(
    start_edge: StartEdge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = start_edge({})

    code, answer, _ = hub(
        capsys, edge, "invoke-module-method", "--module", "inference", "--method", "stats", "--payload", '{"n": 1}',
        "--timeout", "10",
    )  # fmt: skip
    failing, failed, _ = hub(capsys, edge, "invoke-module-method", "-m", "sensor", "--mn", "fail", "--to", "10")

    assert code == 0
    assert answer == {"status": 200, "payload": {"echo": {"n": 1}, "method": "stats", "module": "inference"}}
    assert failing == 0 and failed is not None and failed["status"] == 500  # the module's own status, as az prints it
    assert edge["inference"].request("methods")["methods"] == [{"name": "stats", "payload": {"n": 1}}]


def test_the_cli_times_out_cleanly_on_a_module_that_does_not_answer(
    start_edge: StartEdge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = start_edge({})
    started = time.monotonic()

    code, answer, err = hub(
        capsys, edge, "invoke-module-method", "-m", "sensor", "--method", "ignore", "--timeout", "1"
    )

    assert code == 1 and answer is None
    assert time.monotonic() - started < 5
    assert "edgefleet: error: Timed out waiting for device to respond to method request" in err
    assert "sensor did not answer 'ignore' within 1 s" in err
    assert "Traceback" not in err


def test_the_cli_says_which_module_is_not_connected_unknown_or_which_argument_is_not_json(
    start_edge: StartEdge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = start_edge({}, processes=False)

    offline = hub(capsys, edge, "invoke-module-method", "-m", "sensor", "--method", "stats")
    unknown = hub(capsys, edge, "invoke-module-method", "-m", "ghost", "--method", "stats")
    unknown_twin = hub(capsys, edge, "module-twin", "show", "-m", "ghost")
    bad_json = hub(capsys, edge, "module-twin", "update", "-m", "sensor", "--desired", "{batchWindowMs: 1}")

    assert offline[0] == 1 and "Client edge1/sensor not found (it is not connected)" in offline[2]
    assert unknown[0] == 2 and "unknown module 'ghost'; the stand-in runs sensor, inference" in unknown[2]
    assert unknown_twin[0] == 2 and "unknown module 'ghost'" in unknown_twin[2]
    assert bad_json[0] == 2 and "--desired is not JSON" in bad_json[2]
    assert edge.standin.router.twin("sensor")["desired"] == {"$version": 1}


def test_the_cli_finds_no_standin_in_a_state_dir_without_one_and_says_how_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["hub", "module-twin", "show", "-m", "sensor", "--state-dir", str(tmp_path)])

    assert code == 1
    assert f"no stand-in is running with state dir {tmp_path}" in capsys.readouterr().err


def test_the_control_socket_is_private_and_gone_after_the_standin_stops(start_edge: StartEdge) -> None:
    edge = start_edge({}, processes=False)
    socket_path = edge.standin.state_dir / "control.sock"

    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    edge.standin.stop()
    assert not socket_path.exists()


class _Ops:
    """The stand-in operations the control channel needs, answering from a dict (the channel is under test)."""

    def module_twin(self, module: str) -> dict:
        return {"moduleId": module}

    def update_desired(self, module: str, patch: dict) -> dict:
        return {"moduleId": module, "desired": patch}

    def invoke_method(self, module: str, name: str, payload: object, **timeouts: float) -> object:
        raise NotImplementedError


def test_the_control_socket_works_in_a_state_dir_longer_than_a_unix_socket_path(tmp_path: Path) -> None:
    from edgehub.control import ControlServer, call_standin

    state_dir = tmp_path / ("a-long-folder-name-" * 6) / "state"
    state_dir.mkdir(parents=True, mode=0o700)
    server = ControlServer(state_dir, _Ops()).start()
    try:
        assert len(str(server.path)) > 108
        assert call_standin(state_dir, {"op": "twin.update", "module": "sensor", "desired": {"a": 1}}) == {
            "moduleId": "sensor",
            "desired": {"a": 1},
        }
    finally:
        server.stop()
