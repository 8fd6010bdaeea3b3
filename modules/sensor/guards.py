"""The sensor's checks on well-formed readings: a plausible timestamp and a device id that matches its topic.

The message contract (`edgefleet.messages`) accepts any timestamp the lake can hold (1970 to
2261) and any device id; both are legal yet harmful at the edge. A reading dated decades away
opens a new `date=` partition in the lake, and a reading whose `device_id` disagrees with the
topic it was published on speaks for another device (its seqs, its model, its drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from edgefleet.messages import BAD_TIMESTAMP, DEVICE_MISMATCH, MessageError, format_ts

__all__ = ["DeviceTopic", "TimestampWindow"]

SINGLE_LEVEL = "+"


@dataclass(frozen=True, slots=True)
class TimestampWindow:
    """The readings' acceptable dates: at most `max_age` before the edge's clock, `max_skew` after it."""

    max_age: timedelta
    max_skew: timedelta

    def check(self, ts: datetime, now: datetime) -> None:
        """Raise MessageError(`bad_timestamp`) naming the window when `ts` falls outside it."""
        earliest, latest = now - self.max_age, now + self.max_skew
        if not earliest <= ts <= latest:
            raise MessageError(
                BAD_TIMESTAMP,
                f"ts {format_ts(ts)} is outside the edge's window {format_ts(earliest)} .. {format_ts(latest)} "
                f"(at most {_span(self.max_age)} old, {_span(self.max_skew)} ahead of the edge's clock)",
            )


class DeviceTopic:
    """Where a field topic filter carries the device id: its one `+` level, or nowhere."""

    def __init__(self, topic_filter: str | None) -> None:
        levels = [] if topic_filter is None else topic_filter.split("/")
        wildcards = [index for index, level in enumerate(levels) if level == SINGLE_LEVEL]
        self.topic_filter = topic_filter
        # With no `+` (a shared topic) or several (which one is the device?), the topic names no device.
        self.level: int | None = wildcards[0] if len(wildcards) == 1 else None

    def device_id(self, topic: str) -> str | None:
        """Return the device id `topic` carries, or None when the filter has no device level."""
        if self.level is None:
            return None
        levels = topic.split("/")
        return levels[self.level] if self.level < len(levels) else None

    def check(self, topic: str, device_id: str) -> None:
        """Raise MessageError(`device_mismatch`) when the topic names another device than the reading."""
        expected = self.device_id(topic)
        if expected is not None and expected != device_id:
            raise MessageError(
                DEVICE_MISMATCH,
                f"reading of device_id {device_id!r} arrived on topic {topic!r}, which belongs to device {expected!r}",
            )


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86_400 == 0 and seconds:
        return f"{seconds // 86_400} d"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60} min"
    return f"{seconds} s"
