"""The write-ahead journal: what is not delivered survives a kill; what is delivered is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.journal import SUFFIX, Journal

pytestmark = pytest.mark.fast


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def test_a_message_released_by_every_holder_leaves_nothing_on_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    segment = journal.append("topic/a", b"one")
    journal.acquire(segment)  # e.g. the batch it went into
    journal.release(segment)  # handling done
    assert len(_segments(tmp_path)) == 1
    journal.release(segment)  # the batch reached the next hop
    assert _segments(tmp_path) == []
    assert journal.stats()["segments_pending"] == 0


def test_undelivered_messages_come_back_after_a_restart_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    delivered = journal.append("t", b"delivered")
    journal.append("t", b"pending-1")
    journal.append("t/\u00e9", b"pending-2\x00\xff")
    journal.release(delivered)  # the other two keep the segment
    journal.close()
    again = Journal(tmp_path)
    records = list(again.recover())
    assert [(r.key, r.payload) for r in records] == [
        ("t", b"delivered"),  # same segment as the pending ones: a duplicate, removed where it lands
        ("t", b"pending-1"),
        ("t/\u00e9", b"pending-2\x00\xff"),
    ]
    for record in records:
        again.release(again.append(record.key, record.payload))
    again.forget_recovered()
    assert _segments(tmp_path) == []


def test_a_busy_journal_frees_delivered_segments_while_new_messages_arrive(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_segment_bytes=64)
    held = [journal.append("t", b"x" * 20) for _ in range(10)]
    assert len(set(held)) > 1  # full segments were sealed
    for segment in held[:-1]:
        journal.release(segment)
    assert _segments(tmp_path) == [tmp_path / f"{held[-1]:012d}{SUFFIX}"]


def test_a_torn_last_record_is_skipped_and_the_ones_before_it_are_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("t", b"whole")
    journal.append("t", b"torn-off")
    journal.close()
    (path,) = _segments(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    assert [r.payload for r in Journal(tmp_path).recover()] == [b"whole"]


def test_segments_are_private_to_the_process_user(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append("t", b"secret reading")
    (path,) = _segments(tmp_path / "j")
    assert path.stat().st_mode & 0o077 == 0
    assert (tmp_path / "j").stat().st_mode & 0o077 == 0


def test_what_was_appended_survives_a_kill_9_of_the_writer(tmp_path: Path) -> None:
    script = (
        "import os, sys, signal\n"
        "from pathlib import Path\n"
        "from edgefleet.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "for i in range(100):\n"
        "    j.append('t', str(i).encode())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2], check=False)
    assert result.returncode == -signal.SIGKILL
    assert [int(r.payload) for r in Journal(tmp_path).recover()] == list(range(100))
    assert os.listdir(tmp_path)


def test_a_message_delivered_after_close_leaves_nothing_to_replay(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    segment = journal.append("t", b"in a lake buffer while the router stops")
    journal.close()
    journal.release(segment)  # the upstream flushed it after the router closed the journal
    assert _segments(tmp_path) == []


def test_a_write_torn_by_a_full_disk_costs_no_message_appended_after_it(tmp_path: Path, monkeypatch) -> None:
    journal = Journal(tmp_path)
    journal.append("t", b"before")
    real_write = os.write
    writes = iter([lambda fd, data: real_write(fd, bytes(data)[:5])])  # the disk fills mid-record

    def full_disk(fd: int, data: bytes) -> int:
        step = next(writes, None)
        if step is None:
            raise OSError(28, "No space left on device")
        return step(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        journal.append("t", b"refused")
    monkeypatch.setattr(os, "write", real_write)
    journal.append("t", b"after")  # the disk has room again
    journal.close()
    assert [r.payload for r in Journal(tmp_path).recover()] == [b"before", b"after"]
