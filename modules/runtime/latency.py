"""Receipt-to-prediction latency statistics over a bounded window."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """Keep the last `capacity` latencies (ms) for p50/p99."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._values = np.zeros(capacity)
        self._count = 0
        self._lock = threading.Lock()

    def add_many(self, values_ms: Sequence[float] | np.ndarray) -> None:
        """Record latencies."""
        values_ms = np.asarray(values_ms, dtype=float).reshape(-1)[-len(self._values) :]
        with self._lock:
            start = self._count % len(self._values)
            end = start + len(values_ms)
            if end <= len(self._values):
                self._values[start:end] = values_ms
            else:
                split = len(self._values) - start
                self._values[start:] = values_ms[:split]
                self._values[: end - len(self._values)] = values_ms[split:]
            self._count += len(values_ms)

    def percentiles(self) -> dict[str, float | None]:
        """Return p50 and p99 in ms over the window (None before the first value)."""
        with self._lock:
            filled = self._values[: min(self._count, len(self._values))].copy()
        if not len(filled):
            return {"p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(filled, [50, 99])
        return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}

    def reset(self) -> None:
        """Forget every value."""
        with self._lock:
            self._count = 0
