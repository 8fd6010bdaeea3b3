"""`python -m dashboard`, the dashboard image's command: it serves until SIGTERM and refuses bad settings clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from edgefleet_cli.local_edge import free_port
from tests.edge_fixtures import wait_for

REPO = Path(__file__).resolve().parents[2]


def dashboard(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dashboard", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return None


def test_the_dashboard_serves_its_page_while_the_hub_is_away_and_stops_on_sigterm() -> None:
    port = free_port()
    # Nothing listens on the hub port: the feed keeps retrying, the page is served regardless.
    process = dashboard("--hub", f"127.0.0.1:{free_port()}", "--port", port)
    try:
        assert wait_for(lambda: _status(f"http://127.0.0.1:{port}/") or process.poll() is not None) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert f"Dashboard: http://127.0.0.1:{port}/" in err and "Dashboard stopped" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--hub", "sink"], {}, "DASHBOARD_HUB: 'sink' is not HOST:PORT; write e.g. sink:1883"),
        ([], {"DASHBOARD_SILENT_AFTER_S": "-1"}, "DASHBOARD_SILENT_AFTER_S: Input should be greater than 0"),
        (["--port", "70000"], {}, "DASHBOARD_PORT: Input should be less than or equal to 65535"),
    ],
    ids=["hub-without-port", "negative-silence", "port-out-of-range"],
)
def test_a_bad_setting_exits_2_saying_how_to_fix_it_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    process = dashboard(*args, env=env)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert err.startswith("dashboard: invalid DashboardSettings:")
    assert expected in err
    assert "Traceback" not in err


def test_the_dashboard_runs_without_the_edgehub_package() -> None:
    # A process package never imports another: the dashboard reads the hub through edgefleet.hub_wire.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'edgehub':\n"
        "            raise ImportError('blocked for this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dashboard.__main__, dashboard.cli, dashboard.service\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
