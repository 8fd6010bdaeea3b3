"""Input messages as the inference module keeps them: in the write-ahead journal until answered.

Each message from edgeHub is appended to `STATE_DIR/journal` (edgefleet.journal) before the
SDK's handler returns; its segment is freed once every prediction batch, dead letter and drift
alert carrying its readings was acknowledged by edgeHub. What a kill -9 or a stop leaves
unanswered is read back, in order, at the next start.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import StartError
from edgefleet.filemodes import private_dir
from edgefleet.journal import Journal, JournalRecord, Segment

logger = logging.getLogger(__name__)

__all__ = ["JOURNAL_DIR", "LEGACY_SPOOL_DIR", "InputMessage", "legacy_spool", "open_journal"]

JOURNAL_DIR = "journal"  # under the module's state directory
# Where releases before the journal kept messages that arrived while stopping (JSON lines, body
# base64). Read once at start and moved into the journal; to be dropped in the next release.
LEGACY_SPOOL_DIR = "spool"


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One message as it arrived on an input, and the journal segment keeping it (None: not journaled)."""

    name: str
    body: bytes
    received_s: float  # wall clock, for latency when the sensor did not stamp the reading
    segment: Segment | None = None

    def journal_key(self) -> str:
        """Return the journal key: the input name and the arrival time, which the replay needs too."""
        return f"{self.name} {self.received_s!r}"

    @classmethod
    def from_record(cls, record: JournalRecord) -> InputMessage:
        """Return the message a journal record holds (ValueError when the key is not one of ours)."""
        name, _, received = record.key.rpartition(" ")
        if not name:
            raise ValueError(f"journal key {record.key!r} is not 'input received_s'")
        return cls(name, record.payload, float(received))


def open_journal(folder: Path) -> Journal:
    """Open the journal in `folder`; raise StartError saying how to fix a folder this process cannot write."""
    try:
        private_dir(folder.parent)  # STATE_DIR: the journal and the last good desired set, owner only
        journal = Journal(folder)
        with tempfile.TemporaryFile(dir=folder):  # an existing folder may still refuse new files
            pass
    except OSError as err:
        raise StartError(
            f"cannot keep input messages in {folder} ({err}); set STATE_DIR to a folder this user can "
            "create files in (in a container: a volume mounted there, owned by the module's user)"
        ) from err
    return journal


def legacy_spool(folder: Path) -> Iterator[tuple[Path, list[InputMessage]]]:
    """Yield each spool file an older release left, oldest first, with the messages it holds."""
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    for path in files:
        messages = []
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            logger.error("Cannot read the spool file %s left by an older release: %s", path, err)
            continue
        for line in lines:
            try:
                record = json.loads(line)
                body = base64.b64decode(record["body"])
                messages.append(InputMessage(record["input"], body, float(record["received_s"])))
            except (ValueError, KeyError, TypeError):
                logger.error("Skipping a damaged line in %s", path)
        yield path, messages
