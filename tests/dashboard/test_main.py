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
from tests.hub_logins import HubLogins

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


def test_the_dashboard_serves_its_page_while_the_hub_is_away_and_stops_on_sigterm(hub_logins: HubLogins) -> None:
    port = free_port()
    # Nothing listens on the hub port: the feed keeps retrying, the page is served regardless.
    process = dashboard("--hub", f"127.0.0.1:{free_port()}", *hub_logins.dashboard_flags(), "--port", port)
    try:
        assert wait_for(lambda: _status(f"http://127.0.0.1:{port}/") or process.poll() is not None) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert f"Dashboard: http://127.0.0.1:{port}/" in err and "Dashboard stopped" in err
    assert "Traceback" not in err


def test_a_dashboard_with_a_wrong_hub_password_is_refused_and_logs_which_login_to_check(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    hub_port, port = free_port(), free_port()
    wrong = tmp_path / "stale.password"
    wrong.write_text("an-old-password\n")
    wrong.chmod(0o600)
    with hub_logins.broker(tmp_path / "hub", hub_port) as hub:
        process = dashboard("--hub", f"127.0.0.1:{hub_port}", "--hub-password-file", wrong, "--port", port)
        try:
            assert wait_for(lambda: _status(f"http://127.0.0.1:{port}/") or process.poll() is not None) == 200
            wait_for(lambda: "not authorised" in hub.log_tail())  # the broker refused it, the log said so
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)

    refusals = [line for line in err.splitlines() if "refused the dashboard" in line]
    assert len(refusals) == 1, err  # once, not at every retry
    assert (
        f"Hub at 127.0.0.1:{hub_port} refused the dashboard as edgefleet-dashboard: Connection Refused: not "
        "authorised.; check --hub-username and --hub-password-file (DASHBOARD_HUB_*) against the sink's users file"
    ) in refusals[0]
    assert "an-old-password" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--hub", "sink:1883"],
            {},
            "the hub broker takes no anonymous clients: pass --hub-password-file PATH (DASHBOARD_HUB_PASSWORD_FILE",
        ),
        (["--hub", "sink"], {}, "DASHBOARD_HUB: 'sink' is not HOST:PORT; write e.g. sink:1883"),
        ([], {"DASHBOARD_SILENT_AFTER_S": "-1"}, "DASHBOARD_SILENT_AFTER_S: Input should be greater than 0"),
        (["--port", "70000"], {}, "DASHBOARD_PORT: Input should be less than or equal to 65535"),
    ],
    ids=["hub-without-password", "hub-without-port", "negative-silence", "port-out-of-range"],
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
