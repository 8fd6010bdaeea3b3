"""Store and forward: what the router keeps for a destination that cannot take messages now.

edgeHub keeps every routed message in a store, one queue per endpoint (a module input, or
`$upstream`), until the endpoint has it, or until it is older than its time to live (the route's
`timeToLiveSecs`, else `storeAndForwardConfiguration.timeToLiveSecs`); the time counts from when
edgeHub took the message. A queue is read by priority (a schema-1.1 route's `priority`, 0 first),
in arrival order within one priority.

`HeldQueue` is one such queue for the router. Each held message is kept in a journal of the
destination's own (`edgefleet.journal`, `<journal>/held/<destination>/`), so it survives a
stand-in restart, and so that a destination that stays away keeps only its own messages on disk,
never the segments of messages other destinations have long received. A queue is used by one
thread only (the router's dispatcher for modules, its upstream thread for `$upstream`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.journal import Journal, JournalError, Segment
from edgefleet.routes import Route
from edgefleet.routes.route import MAX_PRIORITY

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TTL_S", "HeldMessage", "HeldQueue", "delivery_terms", "expired", "held_journal", "now_s"]

# edgeHub's default `storeAndForwardConfiguration.timeToLiveSecs` (the template's value too).
DEFAULT_TTL_S = 7200
# The held-journal key: received time (ms since the epoch), priority, time to live (s), then the topic.
_KEY_FIELDS = 3

Release = Callable[[], None]


@dataclass(slots=True)
class HeldMessage:
    """One delivery waiting for its destination: the topic and body to publish, and when it expires."""

    topic: str
    body: bytes
    received_s: float  # wall clock (epoch seconds): it must hold across restarts
    priority: int
    ttl_s: float
    release: Release | None = None  # drops the message's journal reference (delivered or expired)

    def expired(self, now_s: float) -> bool:
        """Return whether the message is older than its time to live."""
        return expired(self.received_s, self.ttl_s, now_s)

    def done(self) -> None:
        """Let the journal forget the message."""
        release, self.release = self.release, None
        if release is not None:
            release()


def expired(received_s: float, ttl_s: float, now_s: float) -> bool:
    """Return whether a message taken at `received_s` is past its time to live at `now_s`."""
    return now_s - received_s > ttl_s


def delivery_terms(sink_routes: Sequence[Route], default_ttl_s: float) -> tuple[int, float]:
    """Return (priority, ttl_s) of a delivery from the routes that chose its sink.

    edgeHub gives a route without `priority` the lowest one and without `timeToLiveSecs` the
    store's; when several routes send one message to one endpoint, the highest priority wins, with its TTL.
    """
    best = min(sink_routes, key=lambda r: MAX_PRIORITY if r.priority is None else r.priority)
    priority = MAX_PRIORITY if best.priority is None else best.priority
    ttl = float(best.time_to_live_secs) if best.time_to_live_secs is not None else float(default_ttl_s)
    return priority, ttl


class HeldQueue:
    """Messages waiting for one destination, by priority then arrival, each kept in the destination's journal."""

    def __init__(self, destination: str, journal: Journal | None) -> None:
        self.destination = destination
        self.journal = journal
        self._queues: dict[int, deque[HeldMessage]] = {}
        self._size = 0
        self.journal_errors = 0

    def __len__(self) -> int:
        return self._size

    def hold(self, message: HeldMessage, original: Release | None) -> None:
        """Keep a message; its copy in this queue's journal replaces the router's reference (`original`)."""
        segment = self._append(message)
        if segment is None:
            message.release = original  # the router's journal keeps it instead
        else:
            message.release = _once(self.journal, segment)
            if original is not None:
                original()
        self._queues.setdefault(message.priority, deque()).append(message)
        self._size += 1

    def restore(self) -> int:
        """Take back what an earlier run held (call once, before `hold`); return how many."""
        if self.journal is None:
            return 0
        restored, kept = 0, True
        for record in self.journal.recover():
            fields = record.key.split("\n", _KEY_FIELDS)
            try:
                received_ms, priority, ttl_s, topic = int(fields[0]), int(fields[1]), float(fields[2]), fields[3]
            except (IndexError, ValueError):
                logger.warning("Held journal of %s has an unreadable record; dropped", self.destination)
                continue
            message = HeldMessage(topic, record.payload, received_ms / 1000, priority, ttl_s)
            segment = self._append(message)
            kept = kept and segment is not None
            message.release = _once(self.journal, segment) if segment is not None else None
            self._queues.setdefault(priority, deque()).append(message)
            self._size += 1
            restored += 1
        if kept:
            self.journal.forget_recovered()
        return restored

    def pop(self) -> HeldMessage | None:
        """Return the next message to deliver (highest priority, oldest first), or None."""
        for priority in sorted(self._queues):
            queue = self._queues[priority]
            if queue:
                self._size -= 1
                return queue.popleft()
        return None

    def push_back(self, message: HeldMessage) -> None:
        """Put a message that could not be delivered back at the head of its queue."""
        self._queues.setdefault(message.priority, deque()).appendleft(message)
        self._size += 1

    def drop_expired(self, now_s: float) -> int:
        """Forget every message past its time to live; return how many."""
        dropped = 0
        for queue in self._queues.values():
            keep: deque[HeldMessage] = deque()
            for message in queue:
                if message.expired(now_s):
                    message.done()
                    dropped += 1
                else:
                    keep.append(message)
            queue.clear()
            queue.extend(keep)
        self._size -= dropped
        return dropped

    def __iter__(self) -> Iterator[HeldMessage]:
        for priority in sorted(self._queues):
            yield from self._queues[priority]

    def close(self) -> None:
        """Close the journal: what is still held stays on disk for the next start."""
        if self.journal is not None:
            self.journal.close()

    def _append(self, message: HeldMessage) -> Segment | None:
        if self.journal is None:
            return None
        key = f"{round(message.received_s * 1000)}\n{message.priority}\n{message.ttl_s:g}\n{message.topic}"
        try:
            return self.journal.append(key, message.body)
        except JournalError as err:
            self.journal_errors += 1
            if self.journal_errors <= 5:
                logger.error("Cannot keep a message for %s in its journal (%s); free disk space", self.destination, err)
            return None


def held_journal(folder: Path | None, destination: str, *, fsync: bool = False) -> Journal | None:
    """Open the journal of one destination's held messages under `<folder>/held/`, or None without a folder."""
    if folder is None:
        return None
    # Module names start with a letter or digit: `_upstream` never names a module.
    name = "_upstream" if destination == "$upstream" else destination
    try:
        return Journal(folder / "held" / name, fsync=fsync)
    except JournalError as err:
        logger.error("Cannot keep messages for %s across a restart: %s", destination, err)
        return None


def _once(journal: Journal | None, segment: Segment) -> Release:
    """Return a callback that releases one reference to `segment`, at most once, from any thread."""
    assert journal is not None
    lock = threading.Lock()

    def release() -> None:
        if lock.acquire(blocking=False):
            journal.release(segment)

    return release


def now_s() -> float:
    """Return the wall clock (held messages carry wall-clock times across restarts)."""
    return time.time()
