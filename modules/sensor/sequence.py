"""Per-device sequence bookkeeping: gaps, duplicates, late readings, device restarts and seq jumps.

Each device keeps a bounded window: its highest seq (`high`) and the last `RECENT_SEQS` seqs it
sent, so a QoS 1 redelivery is spotted as a duplicate and dropped. A seq more than `jump_limit`
(default `SEQ_JUMP_LIMIT`) ahead of `high` is a jump: a second publisher using the device's id,
or a corrupt counter. It is accepted once (counted in `seq_jumps`) but does not move `high`, so
the device's genuine readings that follow are judged against its real position instead of being
taken for late or duplicate readings of a window the jump dragged forward. Jumped seqs are
remembered in their own small window, so a redelivered jump is still a duplicate. A device
that really moved its counter far ahead keeps counting jumps (its readings all pass); restarting
its counter from 0 re-anchors it. A seq far below `high` (or 0) is a device restart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["RECENT_SEQS", "RESET_BELOW", "SEQ_JUMP_LIMIT", "SequenceTracker", "Verdict"]

RECENT_SEQS = 256  # how many recent seqs per device are remembered to spot a redelivered reading
RECENT_JUMPS = 64  # how many jumped seqs per device are remembered, apart, so jumps cannot evict real seqs
RESET_BELOW = 10_000  # a seq this far below the highest seen means the device restarted its counter
SEQ_JUMP_LIMIT = 10_000  # a seq this far above the highest seen is a jump, not the device moving on


class Verdict(Enum):
    """What one reading's seq says about the stream."""

    NEXT = "next"
    GAP = "gap"
    DUPLICATE = "duplicate"
    LATE = "late"
    RESET = "reset"
    FIRST = "first"
    JUMP = "jump"


class _Window:
    """The last `size` seqs, with a set for O(1) lookups."""

    __slots__ = ("order", "seqs")

    def __init__(self, size: int) -> None:
        self.order: deque[int] = deque(maxlen=size)
        self.seqs: set[int] = set()

    def remember(self, seq: int) -> None:
        if len(self.order) == self.order.maxlen:
            self.seqs.discard(self.order[0])
        self.order.append(seq)
        self.seqs.add(seq)

    def clear(self) -> None:
        self.order.clear()
        self.seqs.clear()

    def __contains__(self, seq: int) -> bool:
        return seq in self.seqs


@dataclass(slots=True)
class _DeviceSeq:
    high: int
    recent: _Window = field(default_factory=lambda: _Window(RECENT_SEQS))
    jumped: _Window = field(default_factory=lambda: _Window(RECENT_JUMPS))


class SequenceTracker:
    """Count per-device seq gaps, duplicates, out-of-order readings and jumps (not thread-safe)."""

    def __init__(self, jump_limit: int = SEQ_JUMP_LIMIT) -> None:
        if jump_limit < 1:
            raise ValueError("jump_limit must be at least 1")
        self.jump_limit = jump_limit
        self._devices: dict[str, _DeviceSeq] = {}
        self.missing = 0  # seqs skipped and not (yet) seen late
        self.duplicates = 0
        self.late = 0
        self.resets = 0
        self.jumps = 0

    def observe(self, device_id: str, seq: int) -> Verdict:
        """Record one reading and say how its seq relates to the device's previous ones."""
        state = self._devices.get(device_id)
        if state is None:
            state = self._devices[device_id] = _DeviceSeq(high=seq)
            state.recent.remember(seq)
            return Verdict.FIRST
        if seq in state.recent or seq in state.jumped:
            self.duplicates += 1
            return Verdict.DUPLICATE
        if seq - state.high > self.jump_limit:
            self.jumps += 1
            state.jumped.remember(seq)
            return Verdict.JUMP
        if seq > state.high:
            verdict = Verdict.NEXT if seq == state.high + 1 else Verdict.GAP
            self.missing += seq - state.high - 1
            state.high = seq
        elif state.high - seq > RESET_BELOW or seq == 0:
            self.resets += 1
            state.high = seq
            state.recent.clear()
            state.jumped.clear()
            verdict = Verdict.RESET
        else:
            # Arrived after a later seq: it fills one hole counted as missing.
            self.late += 1
            self.missing = max(0, self.missing - 1)
            verdict = Verdict.LATE
        state.recent.remember(seq)
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
            "seq_jumps": self.jumps,
        }

    def reset(self) -> None:
        """Zero the counters (the per-device positions are kept)."""
        self.missing = self.duplicates = self.late = self.resets = self.jumps = 0
