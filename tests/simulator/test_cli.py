"""The simulator as a user runs it (`python -m simulator`, the image's command): output, report, Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgehub.broker import Broker
from simulator.cli import cmd_simulate, register
from simulator.errors import ProfileError

REPO = Path(__file__).resolve().parents[2]


def simulate(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def parse(*args: str) -> argparse.Namespace:
    """Parse `edgefleet simulate ...` as edgefleet_cli wires `register` into its parser."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *args])


def test_simulate_publishes_the_demo_fleet_and_writes_the_report(broker: Broker, tmp_path: Path):
    report_path = tmp_path / "report.json"
    port = broker.listeners[0].port
    process = simulate("--port", port, "--duration-s", 2, "--speed", 0, "--report", report_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["totals"]["devices"] == 200 and report["seed"] == 7 and report["mqtt"]["port"] == port
    assert report["delivery"]["unacknowledged"] == 0
    assert f"sent {report['totals']['sent']:,} readings" in out and f"report: {report_path}" in out


def test_simulate_replays_a_recording(broker: Broker, tmp_path: Path):
    recording = tmp_path / "rec.jsonl"
    recording.write_text('{"device_id": "dev-7", "ts": "2026-11-01T00:00:00Z", "temperature_c": 20.1}\n')
    process = simulate("--port", broker.listeners[0].port, "--replay", recording, "--speed", 0)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "replaying" in out and "sent 1 readings" in out


def test_ctrl_c_stops_cleanly_and_still_writes_the_report(broker: Broker, tmp_path: Path):
    report_path = tmp_path / "report.json"
    process = simulate("--port", broker.listeners[0].port, "--duration-s", 60, "--report", report_path)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("simulating 200 devices")  # printed once Ctrl-C is handled
    time.sleep(1.0)  # publishing at 200 readings/s
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["stopped_early"] and 0 < report["totals"]["sent"] < 12_000


def test_a_bad_profile_raises_a_profile_error_for_the_cli_to_print(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_types: [{name: a, count: 1, rate: 5}]\n")
    with pytest.raises(ProfileError, match="did you mean 'rate_per_s'"):
        cmd_simulate(parse("--profile", str(bad)))


def test_a_bad_profile_makes_the_process_exit_2_with_what_to_fix_and_no_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_types: [{name: a, count: 1, rate: 5}]\n")
    process = simulate("--profile", bad)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "simulator: error:" in err and "did you mean 'rate_per_s'" in err
    assert "Traceback" not in err
