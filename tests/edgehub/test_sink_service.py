"""`python -m edgehub.sink_service`, the sink image's command: rows it holds reach the lake on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.journal import Journal
from edgefleet.lake import DEADLETTER_DIR, read_lake
from edgefleet.routes import Message
from edgefleet_cli.local_edge import free_port
from tests.hub_logins import HubLogins

from .conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def sink_service(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgehub.sink_service", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def telemetry(seq: int) -> Message:
    body = {"schema": "edgefleet.telemetry/1", "device_id": "dev-1", "seq": seq, "ts": "2026-11-20T10:00:00Z"}
    return Message("edge1", "sensor", "telemetry", {}, JSON, json.dumps({**body, "features": {"temp": 1.0}}).encode())


def journaled(state_dir: Path) -> int:
    """Return how many messages the sink's journal holds (read only)."""
    return sum(1 for _ in Journal(state_dir / "journal").recover())


def lake_seqs(lake_dir: Path) -> list[int]:
    return sorted(pd.read_parquet(lake_dir)["seq"]) if list(lake_dir.glob("date=*/*.parquet")) else []


@pytest.mark.parametrize(
    "held_in",
    [
        pytest.param(("--flush-every-s", 3600), id="flush-buffer"),
        pytest.param(("--flush-every-s", 0.1, "--roll-every-s", 3600), id="open-rolling-file"),
    ],
)
def test_rows_the_sink_held_in_its_flush_window_survive_a_kill_9(
    tmp_path: Path, hub_logins: HubLogins, held_in: tuple[object, ...]
) -> None:
    count, port = 150, free_port()
    args = (
        "--listen", f"127.0.0.1:{port}", "--lake", tmp_path / "lake", "--state-dir", tmp_path / "state",
        *hub_logins.sink_flags(),
    )  # fmt: skip
    health_file = tmp_path / "healthy"
    process = sink_service(*args, *held_in, "--health-file", health_file)
    publisher = hub_logins.publisher(port, "test-sink-service-publisher")
    try:
        wait_for(lambda: health_file.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        for seq in range(count):
            publisher(telemetry(seq))
        assert publisher.close(timeout_s=20)
        time.sleep(1.0)  # the sink takes them off its broker (and acknowledges them) in milliseconds
        process.kill()
        process.communicate(timeout=30)
        assert lake_seqs(tmp_path / "lake") == []  # all of them were in the flush window (or the open file)
        open_files = list((tmp_path / "lake").glob("date=*/.rolling-*.tmp"))
        assert len(open_files) == (1 if "--roll-every-s" in held_in else 0)

        process = sink_service(*args, "--flush-every-s", 0.2, "--roll-every-s", 0.2)
        wait_for(lambda: len(set(lake_seqs(tmp_path / "lake"))) >= count or process.poll() is not None, 60)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)

    seqs = lake_seqs(tmp_path / "lake")
    assert set(seqs) == set(range(count)), err  # 0 lost
    assert sorted(read_lake(tmp_path / "lake")["seq"]) == list(range(count))  # none doubled for read_lake
    assert not list((tmp_path / "lake").glob("date=*/.rolling-*"))  # the killed run's open file is gone
    print(f"sink kill -9: {count} sent, {count - len(set(seqs))} lost, {len(seqs) - len(set(seqs))} duplicates")


def test_buffered_rows_reach_the_lake_when_the_service_is_told_to_stop(tmp_path: Path, hub_logins: HubLogins) -> None:
    port = free_port()
    health_file = tmp_path / "healthy"
    process = sink_service(
        "--listen", f"127.0.0.1:{port}", "--lake", tmp_path / "lake", "--state-dir", tmp_path / "state",
        "--flush-every-s", 3600, "--health-file", health_file, *hub_logins.sink_flags(),
    )  # fmt: skip
    publisher = hub_logins.publisher(port, "test-sink-service-publisher")
    try:
        wait_for(lambda: health_file.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        for seq in range(3):
            publisher(telemetry(seq))
        assert publisher.close(timeout_s=20)
        wait_for(lambda: journaled(tmp_path / "state") == 3)  # the sink took them off its broker
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)

    assert process.returncode == 0, err
    assert sorted(pd.read_parquet(tmp_path / "lake")["seq"]) == [0, 1, 2]
    assert "Traceback" not in err


def test_the_lake_dead_letters_and_journal_the_sink_writes_are_readable_by_their_owner_only(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    port, lake, state = free_port(), tmp_path / "lake", tmp_path / "state"
    health_file = tmp_path / "healthy"
    process = sink_service(
        "--listen", f"127.0.0.1:{port}", "--lake", lake, "--state-dir", state,
        "--flush-every-s", 0.2, "--roll-every-s", 0.2, "--health-file", health_file, *hub_logins.sink_flags(),
    )  # fmt: skip
    publisher = hub_logins.publisher(port, "test-sink-service-modes")
    try:
        wait_for(lambda: health_file.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        publisher(telemetry(1))
        dead = {"schema": "edgefleet.deadletter/1", "reason": "not_json", "source": "sensor/telemetry"}
        publisher(Message("edge1", "sensor", "deadletters", {}, JSON, json.dumps(dead).encode()))
        assert publisher.close(timeout_s=20)
        wait_for(lambda: lake_seqs(lake) == [1] and any((lake / DEADLETTER_DIR).glob("*.jsonl")))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    parquet = list(lake.glob("date=*/*.parquet"))
    assert parquet and {mode(path) for path in parquet} == {0o600}
    assert {mode(path.parent) for path in parquet} == {0o700} and mode(lake) == 0o700
    assert mode(lake / DEADLETTER_DIR) == 0o700
    assert {mode(path) for path in (lake / DEADLETTER_DIR).glob("*.jsonl")} == {0o600}
    assert mode(state) == mode(state / "journal") == mode(state / "broker") == 0o700
    assert {mode(path) for path in (state / "broker").glob("*.log")} == {0o600}
    # the broker's users (the sink's own password hash among them) and ACL
    logins = [path for path in (state / "broker").glob("mosquitto-hub.*") if path.suffix in (".passwd", ".acl")]
    assert len(logins) == 2 and {mode(path) for path in logins} == {0o600}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--listen", "0.0.0.0"], {}, "SINK_LISTEN: '0.0.0.0' is not HOST:PORT; write e.g. sink:1883"),
        ([], {"SINK_FLUSH_EVERY_S": "0"}, "SINK_FLUSH_EVERY_S: Input should be greater than 0"),
        (["--roll-every-s", "-1"], {}, "SINK_ROLL_EVERY_S: Input should be greater than 0"),
        ([], {"SINK_ROLL_BYTES": "0"}, "SINK_ROLL_BYTES: Input should be greater than 0"),
    ],
    ids=["listen-without-port", "flush-interval-zero", "roll-age-negative", "roll-size-zero"],
)
def test_a_bad_setting_exits_2_saying_how_to_fix_it_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    process = sink_service(*args, env=env)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert err.startswith("sink: invalid SinkSettings:")
    assert expected in err
    assert "Traceback" not in err
