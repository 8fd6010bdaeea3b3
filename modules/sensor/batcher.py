"""Pack encoded readings into batch envelopes bounded by a time window and a byte size."""

from __future__ import annotations

from edgefleet.messages import BatchPacker

__all__ = ["Batcher"]


class Batcher:
    """Collect encoded readings; hand out a batch when it is full or its window has passed (not thread-safe).

    The byte limit is `edgefleet.messages.BatchPacker`'s (the inference module packs its
    predictions by the same rule); this adds the time window.
    """

    def __init__(self, window_ms: int, max_bytes: int) -> None:
        self.window_ms = window_ms
        self._packer = BatchPacker(max_bytes)
        self._deadline: float | None = None

    @property
    def max_bytes(self) -> int:
        return self._packer.max_bytes

    def add(self, item: bytes, now_s: float) -> bytes | None:
        """Add an item (of at most `max_bytes - BATCH_OVERHEAD_BYTES`); return the previous batch if it was full."""
        full = self._packer.add(item)
        if len(self._packer) == 1:  # the item opened a batch: its window starts now
            self._deadline = now_s + self.window_ms / 1000
        if self.window_ms == 0 and full is None:
            full = self.take()
        return full

    def deadline(self) -> float | None:
        """Return when the open batch must be sent (monotonic seconds), or None when empty."""
        return self._deadline

    def take(self) -> bytes | None:
        """Return the open batch as one envelope and start a new one."""
        body = self._packer.take()
        self._deadline = None
        return body

    def __len__(self) -> int:
        return len(self._packer)
