"""Per-device sequence bookkeeping: gaps, duplicates, late readings and device restarts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

RECENT_SEQS = 256  # how many recent seqs per device are remembered to spot a redelivered reading
RESET_BELOW = 10_000  # a seq this far below the highest seen means the device restarted its counter


class Verdict(Enum):
    """What one reading's seq says about the stream."""

    NEXT = "next"
    GAP = "gap"
    DUPLICATE = "duplicate"
    LATE = "late"
    RESET = "reset"
    FIRST = "first"


@dataclass(slots=True)
class _DeviceSeq:
    high: int
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_SEQS))
    recent_set: set[int] = field(default_factory=set)

    def remember(self, seq: int) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.recent_set.discard(self.recent[0])
        self.recent.append(seq)
        self.recent_set.add(seq)


class SequenceTracker:
    """Count per-device seq gaps, duplicates and out-of-order readings (not thread-safe)."""

    def __init__(self) -> None:
        self._devices: dict[str, _DeviceSeq] = {}
        self.missing = 0  # seqs skipped and not (yet) seen late
        self.duplicates = 0
        self.late = 0
        self.resets = 0

    def observe(self, device_id: str, seq: int) -> Verdict:
        """Record one reading and say how its seq relates to the device's previous ones."""
        state = self._devices.get(device_id)
        if state is None:
            state = self._devices[device_id] = _DeviceSeq(high=seq)
            state.remember(seq)
            return Verdict.FIRST
        if seq in state.recent_set:
            self.duplicates += 1
            return Verdict.DUPLICATE
        if seq > state.high:
            verdict = Verdict.NEXT if seq == state.high + 1 else Verdict.GAP
            self.missing += seq - state.high - 1
            state.high = seq
        elif state.high - seq > RESET_BELOW or seq == 0:
            self.resets += 1
            state.high = seq
            state.recent.clear()
            state.recent_set.clear()
            verdict = Verdict.RESET
        else:
            # Arrived after a later seq: it fills one hole counted as missing.
            self.late += 1
            self.missing = max(0, self.missing - 1)
            verdict = Verdict.LATE
        state.remember(seq)
        return verdict

    @property
    def devices(self) -> int:
        """Return how many devices have been seen."""
        return len(self._devices)

    def counters(self) -> dict[str, int]:
        """Return the counters."""
        return {
            "devices": self.devices,
            "seq_missing": self.missing,
            "seq_duplicates": self.duplicates,
            "seq_late": self.late,
            "seq_resets": self.resets,
        }

    def reset(self) -> None:
        """Zero the counters (the per-device positions are kept)."""
        self.missing = self.duplicates = self.late = self.resets = 0
