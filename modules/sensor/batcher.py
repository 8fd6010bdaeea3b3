"""Pack encoded readings into batch envelopes bounded by a time window and a byte size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.journal import Segment
from edgefleet.messages import BatchPacker

__all__ = ["Batch", "Batcher"]


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch envelope and the journal segments its readings came from (one reference held on each)."""

    body: bytes
    segments: tuple[Segment, ...] = ()


class Batcher:
    """Collect encoded readings; hand out a batch when it is full or its window has passed (not thread-safe).

    The byte limit is `edgefleet.messages.BatchPacker`'s (the inference module packs its
    predictions by the same rule); this adds the time window. Each reading may come from a
    journal segment: the open batch holds one reference per distinct segment (`hold` is called
    when a segment first enters it) and hands those references over with the batch, so the
    sender releases them once the next hop has it.
    """

    def __init__(self, window_ms: int, max_bytes: int, hold: Callable[[Segment], None] | None = None) -> None:
        self.window_ms = window_ms
        self._packer = BatchPacker(max_bytes)
        self._deadline: float | None = None
        self._hold = hold
        self._segments: dict[Segment, None] = {}  # an ordered set

    @property
    def max_bytes(self) -> int:
        return self._packer.max_bytes

    def add(self, item: bytes, now_s: float, segment: Segment | None = None) -> Batch | None:
        """Add an item (of at most `max_bytes - BATCH_OVERHEAD_BYTES`); return the previous batch if it was full."""
        full_body = self._packer.add(item)
        full = None
        if full_body is not None:  # the item did not fit: it opens the next batch, without the full one's segments
            full = Batch(full_body, tuple(self._segments))
            self._segments = {}
        if segment is not None and segment not in self._segments:
            self._segments[segment] = None
            if self._hold is not None:
                self._hold(segment)
        if len(self._packer) == 1:  # the item opened a batch: its window starts now
            self._deadline = now_s + self.window_ms / 1000
        if self.window_ms == 0 and full is None:
            full = self.take()
        return full

    def deadline(self) -> float | None:
        """Return when the open batch must be sent (monotonic seconds), or None when empty."""
        return self._deadline

    def take(self) -> Batch | None:
        """Return the open batch as one envelope with its segments, and start a new one."""
        body = self._packer.take()
        self._deadline = None
        segments, self._segments = tuple(self._segments), {}
        return None if body is None else Batch(body, segments)

    def segments(self) -> tuple[Segment, ...]:
        """Return the journal segments the open batch holds."""
        return tuple(self._segments)

    def __len__(self) -> int:
        return len(self._packer)
