"""`python -m edgehub`, the stand-in image's command: it serves until SIGTERM and refuses bad settings clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import next_ip_base, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deployment" / "deployment.template.json"


def edgehub(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgehub", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_the_stand_in_serves_the_manifest_modules_until_sigterm_and_writes_their_env_files(tmp_path: Path) -> None:
    ip_base = next_ip_base()
    health_file = tmp_path / "healthy"
    process = edgehub(
        "--deployment", TEMPLATE, "--state-dir", tmp_path / "state", "--lake", tmp_path / "lake",
        "--ip-base", ip_base, "--health-file", health_file,
    )  # fmt: skip
    try:
        wait_for(lambda: health_file.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        env_file = tmp_path / "state" / "modules" / "inference.env"
        assert f"GatewayHostName={ip_base}.11;" in env_file.read_text()
        assert (tmp_path / "state" / "modules" / "sensor.env").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--upstream-mqtt", "sink"], {}, "EDGEHUB_UPSTREAM_MQTT: 'sink' is not HOST:PORT; write e.g. sink:1883"),
        ([], {"EDGEHUB_IP_BASE": "10.0.0"}, "EDGEHUB_IP_BASE: ip_base '10.0.0' must be the first three octets of"),
        (["--deployment", "nowhere.json"], {}, "pass --deployment PATH or set EDGEHUB_DEPLOYMENT"),
        (["--module-host", "sensor"], {}, "write each module's address as MODULE=IP"),
        ([], {"EDGEHUB_LOG_LEVEL": "LOUD"}, "EDGEHUB_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
    ids=["hub-address-without-port", "ip-base-off-loopback", "missing-manifest", "module-host-without-ip", "log-level"],
)
def test_a_bad_setting_exits_2_saying_how_to_fix_it_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    process = edgehub(*args, env=env)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert err.startswith("edgehub: invalid EdgeHubSettings:")
    assert expected in err
    assert "Traceback" not in err


def test_help_lists_the_flags_and_exits_0() -> None:
    process = edgehub("--help")
    out, _ = process.communicate(timeout=60)

    assert process.returncode == 0
    assert "--upstream-mqtt HOST:PORT" in out and "--module-host MODULE=IP" in out
