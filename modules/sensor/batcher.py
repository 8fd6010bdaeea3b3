"""Pack encoded readings into batch envelopes bounded by a time window and a byte size."""

from __future__ import annotations

from edgefleet.messages import BATCH_OVERHEAD_BYTES, batch_envelope


class Batcher:
    """Collect encoded readings; hand out a batch when it is full or its window has passed (not thread-safe)."""

    def __init__(self, window_ms: int, max_bytes: int) -> None:
        self.window_ms = window_ms
        self.max_bytes = max_bytes
        self._items: list[bytes] = []
        self._bytes = BATCH_OVERHEAD_BYTES
        self._deadline: float | None = None

    def fits_alone(self, item: bytes) -> bool:
        """Return whether one item fits in a batch at all."""
        return BATCH_OVERHEAD_BYTES + len(item) <= self.max_bytes

    def add(self, item: bytes, now_s: float) -> bytes | None:
        """Add an item (that `fits_alone`); return the previous batch if the item did not fit beside it."""
        full = None
        added = len(item) + (1 if self._items else 0)
        if self._items and self._bytes + added > self.max_bytes:
            full = self.take()
            added = len(item)
        if not self._items:
            self._deadline = now_s + self.window_ms / 1000
        self._items.append(item)
        self._bytes += added
        if self.window_ms == 0 and full is None:
            full = self.take()
        return full

    def deadline(self) -> float | None:
        """Return when the open batch must be sent (monotonic seconds), or None when empty."""
        return self._deadline

    def take(self) -> bytes | None:
        """Return the open batch as one envelope and start a new one."""
        if not self._items:
            return None
        body = batch_envelope(self._items)
        self._items, self._bytes, self._deadline = [], BATCH_OVERHEAD_BYTES, None
        return body

    def __len__(self) -> int:
        return len(self._items)
