"""Coalesce predictions across processing rounds into one upstream message per time window or size cap.

IoT Hub bills each message in 4 KB units: a round's predictions (often a single sensor batch of
~15 readings) compress to ~1 KB and would pay a whole unit. `Coalescer` keeps encoded predictions
(the worker thread's only) until the first of them has waited `window_s`, or until the next one
would make the batch envelope bigger than `max_bytes` (before compression), and hands the closed
batch back with the journal segments of its readings. The caller holds one journal reference per
segment while the batch is open (`hold` is called once per new segment) and releases them after
the compressed message is acknowledged by edgeHub, so nothing is forgotten before the next hop has it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.journal import Segment
from edgefleet.messages import BATCH_OVERHEAD_BYTES, batch_envelope

__all__ = ["Closed", "Coalescer"]


@dataclass(frozen=True, slots=True)
class Closed:
    """A closed batch: its envelope (not compressed), how many predictions, the segments it holds."""

    body: bytes
    count: int
    segments: tuple[Segment, ...]


class Coalescer:
    """Keep encoded predictions until the window has passed or the cap is reached (not thread-safe)."""

    def __init__(self, window_s: float, max_bytes: int, hold: Callable[[Segment], None]) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self._hold = hold
        self._items: list[bytes] = []
        self._bytes = BATCH_OVERHEAD_BYTES
        self._segments: dict[Segment, None] = {}  # held for the open batch, in order
        self._opened_s: float | None = None

    def configure(self, window_s: float, max_bytes: int) -> None:
        """Change the window and the cap (the open batch keeps its items; the next `add` obeys the cap)."""
        self.window_s = window_s
        self.max_bytes = max_bytes

    def add(self, item: bytes, segment: Segment | None, now_s: float) -> Closed | None:
        """Add one encoded prediction; return the open batch, closed, when `item` did not fit beside it."""
        closed = None
        added = len(item) + (1 if self._items else 0)  # the separating comma
        if self._items and self._bytes + added > self.max_bytes:
            closed = self.take()
            added = len(item)
        if not self._items:
            self._opened_s = now_s
        self._items.append(item)
        self._bytes += added
        if segment is not None and segment not in self._segments:
            self._hold(segment)
            self._segments[segment] = None
        return closed

    def due(self, now_s: float) -> bool:
        """Return whether the open batch has waited its window (always, with a window of 0)."""
        return self._opened_s is not None and now_s - self._opened_s >= self.window_s

    def time_left(self, now_s: float) -> float | None:
        """Return seconds until the open batch is due (None when nothing is open)."""
        if self._opened_s is None:
            return None
        return max(0.0, self._opened_s + self.window_s - now_s)

    def take(self) -> Closed | None:
        """Close the open batch and return it (None when empty)."""
        if not self._items:
            return None
        closed = Closed(batch_envelope(self._items), len(self._items), tuple(self._segments))
        self._items, self._bytes, self._segments, self._opened_s = [], BATCH_OVERHEAD_BYTES, {}, None
        return closed

    def __len__(self) -> int:
        return len(self._items)
