"""A write-ahead journal: keep each message on disk from the moment it is taken until the next hop has it.

MQTT acknowledges a QoS 1 message when the receiver's callback returns, long before a batch,
a processing round or a lake buffer holding it reaches the next hop. A process that appends
each message here before returning from that callback loses nothing to a kill -9: what was
not yet delivered is read back at the next start (`recover`) and handled again; the place it
lands removes the duplicates by (device_id, seq).

Messages go to numbered segment files. Every piece of pending work that carries data of a
segment (an open batch, a message being routed, an unflushed lake buffer) holds a reference
to it (`append` returns one; `acquire` adds more, `release` drops one). A segment is deleted
when its last reference is released, so the folder holds exactly what is not delivered yet.

Writes are plain `write(2)` calls: the data is in the kernel once `append` returns, which
survives the process being killed; `fsync=True` also survives a power cut, at a cost per
message. benchmarks/journal_cost.py (modules) and benchmarks/router_journal.py measure the cost.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefleet.filemodes import private_dir

logger = logging.getLogger(__name__)

__all__ = ["Journal", "JournalError", "JournalRecord", "Segment"]

SUFFIX = ".wal"
# key length, payload length, CRC-32 of key + payload
_HEADER = struct.Struct("<III")
MAX_SEGMENT_BYTES = 8 * 1024 * 1024
# A segment stops taking appends after this long, so a busy process (whose segments never empty
# while new messages keep arriving) frees delivered data within about a second, and a restart
# replays (as duplicates) at most this much that was already delivered. A new segment costs a
# file create and delete (~150 us): twice a second is nothing.
MAX_SEGMENT_AGE_S = 0.5

Segment = int


class JournalError(OSError):
    """Raise when the journal cannot keep a message (disk full, folder not writable)."""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One message read back from a previous run's segment."""

    key: str
    payload: bytes


class Journal:
    """Keep messages in segment files under `folder` until every reference to their segment is released."""

    def __init__(
        self,
        folder: Path,
        *,
        fsync: bool = False,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        max_segment_age_s: float = MAX_SEGMENT_AGE_S,
    ) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age_s = max_segment_age_s
        self._lock = threading.Lock()
        self._refs: dict[Segment, int] = {}
        self._current: Segment | None = None
        self._fd: int | None = None
        self._current_bytes = 0
        self._current_opened_s = 0.0
        self._recovered: list[Path] = []
        self._appended = 0
        self._bytes = 0
        self._deleted = 0
        try:
            private_dir(self.folder)  # 0700 even when an older version made it wider
        except OSError as err:
            raise JournalError(f"cannot create the journal folder {self.folder} ({err}); set STATE_DIR") from err
        existing = _segment_files(self.folder)
        self._next = (int(existing[-1].stem) + 1) if existing else 1

    # -- after a restart ------------------------------------------------------------------------

    def recover(self) -> Iterator[JournalRecord]:
        """Yield every message a previous run kept, oldest first (call before the first `append`).

        Handle each one as if it had just arrived (which appends it again); then call
        `forget_recovered` to delete the old segments.
        """
        self._recovered = _segment_files(self.folder)
        for path in self._recovered:
            yield from _read_segment(path)

    def forget_recovered(self) -> None:
        """Delete the segments `recover` read: their messages are in new segments or delivered."""
        for path in self._recovered:
            path.unlink(missing_ok=True)
        self._recovered = []

    # -- taking messages ------------------------------------------------------------------------

    def append(self, key: str, payload: bytes) -> Segment:
        """Write one message and return its segment with one reference held for the caller."""
        key_bytes = key.encode("utf-8")
        record = _HEADER.pack(len(key_bytes), len(payload), _crc(key_bytes, payload)) + key_bytes + payload
        with self._lock:
            segment = self._writable_segment(len(record))
            assert self._fd is not None
            try:
                _write_all(self._fd, record)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as err:
                # A torn record would hide every later record of this segment from `recover`: start a new one.
                self._seal_current()
                raise JournalError(f"cannot write the journal {self.folder} ({err})") from err
            self._current_bytes += len(record)
            self._refs[segment] += 1
            self._appended += 1
            self._bytes += len(record)
            return segment

    def acquire(self, segment: Segment) -> None:
        """Add a reference: one more piece of pending work carries data of `segment`."""
        with self._lock:
            self._refs[segment] += 1

    def release(self, segment: Segment) -> None:
        """Drop a reference; delete the segment once none is left and it takes no more appends."""
        with self._lock:
            left = self._refs[segment] - 1
            self._refs[segment] = left
            if segment == self._current and left == 1:
                # Only the open segment's own reference is left: all it holds was delivered, so
                # close it now (the next append starts a new one) rather than replay it after a restart.
                self._close_current()
                left = 0
            if left > 0:
                return
            del self._refs[segment]
            self._delete(segment)

    def close(self) -> None:
        """Close the open segment; undelivered segments stay for the next start."""
        with self._lock:
            if self._current is not None:
                # Seal (drop its own reference), not only close: a release after `close` still deletes it.
                self._seal_current()

    def stats(self) -> dict[str, int]:
        """Return messages and bytes appended, segments deleted and segments still pending."""
        with self._lock:
            return {
                "appended": self._appended,
                "bytes": self._bytes,
                "segments_deleted": self._deleted,
                "segments_pending": len(self._refs),
            }

    # -- segments -------------------------------------------------------------------------------

    def _writable_segment(self, record_bytes: int) -> Segment:
        """Return the segment to append to, sealing the current one when it is full or old (lock held)."""
        now_s = time.monotonic()
        if self._current is not None and (
            self._current_bytes + record_bytes > self.max_segment_bytes
            or now_s - self._current_opened_s > self.max_segment_age_s
        ):
            self._seal_current()
        if self._current is None:
            segment = self._next
            self._next += 1
            path = self._path(segment)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
            except OSError as err:
                raise JournalError(f"cannot create the journal segment {path} ({err})") from err
            self._current, self._current_bytes, self._current_opened_s = segment, 0, now_s
            # The open segment holds a reference of its own, dropped when it is sealed.
            self._refs[segment] = 1
        return self._current

    def _seal_current(self) -> None:
        """Stop appending to the current segment; delete it if nothing references it any more (lock held)."""
        segment = self._current
        assert segment is not None
        self._close_current()
        self._refs[segment] -= 1
        if self._refs[segment] == 0:
            del self._refs[segment]
            self._delete(segment)

    def _close_current(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._current = None, None

    def _delete(self, segment: Segment) -> None:
        try:
            self._path(segment).unlink(missing_ok=True)
        except OSError as err:  # it is replayed at the next start: duplicates, never a loss
            logger.warning("Cannot delete the delivered journal segment %s: %s", self._path(segment), err)
        self._deleted += 1

    def _path(self, segment: Segment) -> Path:
        return self.folder / f"{segment:012d}{SUFFIX}"


def _segment_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.stem.isdigit())


def _read_segment(path: Path) -> Iterator[JournalRecord]:
    """Yield a segment's records; stop at a torn or damaged tail (the write the kill interrupted)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        logger.error("Cannot read the journal segment %s: %s", path, err)
        return
    offset = 0
    while offset + _HEADER.size <= len(data):
        key_len, payload_len, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + key_len + payload_len
        if end > len(data):
            break
        key_bytes, payload = data[start : start + key_len], data[start + key_len : end]
        if _crc(key_bytes, payload) != crc:
            break
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            break
        yield JournalRecord(key, payload)
        offset = end
    if offset < len(data):
        logger.warning(
            "Journal segment %s ends in %d damaged byte(s); kept what precedes them", path, len(data) - offset
        )


def _crc(key: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(key)) & 0xFFFFFFFF


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
