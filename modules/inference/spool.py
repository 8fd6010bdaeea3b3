"""The spool: messages taken from edgeHub but not answered before a stop, kept on disk for the next start.

edgeHub considers a message delivered once the SDK acknowledged it, so what arrives while the
module stops would be lost; it is written here as JSON lines (body base64) and replayed, in
order, when the module starts again. A file is deleted only once its messages were answered.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["SPOOL_DIR", "InputMessage", "Spool"]

SPOOL_DIR = "spool"  # under the module's state directory


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One message as it arrived on an input."""

    name: str
    body: bytes
    received_s: float  # wall clock, for latency when the sensor did not stamp the reading


class Spool:
    """Keep unanswered input messages in `folder` across a restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, items: Sequence[InputMessage]) -> None:
        """Write `items` to a new spool file atomically; a failure is logged as lost messages, never raised."""
        if not items:
            return
        path = self.folder / f"{time.time_ns()}.jsonl"
        lines = [_line(item) for item in items]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, path)
            logger.info("Kept %d message(s) that arrived while stopping in %s", len(items), path)
        except OSError as err:
            logger.error("LOST %d message(s): cannot write the spool %s (%s); set STATE_DIR", len(items), path, err)

    def replay(self, post: Callable[[InputMessage], None]) -> list[Path]:
        """Hand every spooled message to `post`, oldest file first; return the files read (to `forget` later)."""
        files = sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []
        for path in files:
            count = 0
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    item = InputMessage(record["input"], base64.b64decode(record["body"]), float(record["received_s"]))
                except (ValueError, KeyError, TypeError):
                    logger.error("Skipping a damaged line in %s", path)
                    continue
                post(item)
                count += 1
            logger.info("Replaying %d message(s) kept at the last stop (%s)", count, path.name)
        return files

    @staticmethod
    def forget(files: Sequence[Path]) -> None:
        """Delete spool files whose messages were answered."""
        for path in files:
            path.unlink(missing_ok=True)


def _line(item: InputMessage) -> str:
    body = base64.b64encode(item.body).decode()
    return json.dumps({"input": item.name, "received_s": item.received_s, "body": body})
