"""Keep one reading's failure its own: predict row by row when a group call fails, quarantine failing models.

A model call predicts many readings at once, so one reading the model cannot answer (it raises,
or returns inf/NaN for a sensor's FLT_MAX sentinel) would otherwise cost every reading of the
call. `predict_each` gives each row its value or the reason it has none; `Quarantine` counts
each device model's failures and takes a model out of service after a run of them.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from modules.inference.predictor import Choice, Predictor

__all__ = ["ERROR_CHARS", "Quarantine", "RowOutcome", "describe_error", "predict_each"]

ERROR_CHARS = 300  # an exception's text can be huge (a numpy array in the message): keep alerts short

# One row's outcome: its finite prediction, or why no prediction (the error text).
RowOutcome = float | str


def describe_error(err: BaseException) -> str:
    """Return `err` as one short line for logs, dead letters and alerts (always valid UTF-8)."""
    text = f"{type(err).__name__}: {err}"[:ERROR_CHARS]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate would fail encode_json


def predict_each(predictor: Predictor, model: Any, choice: Choice, rows: Sequence[list[float]]) -> list[RowOutcome]:
    """Predict rows that share one model; a row the model cannot answer gets the error text instead."""
    try:
        values = predictor.predict(model, choice, rows)
        if len(values) != len(rows):
            raise ValueError(f"the model returned {len(values)} values for {len(rows)} rows")
    except Exception as err:  # a model may raise anything; it must cost only the rows it cannot answer
        if len(rows) == 1:
            return [describe_error(err)]
        # Which row failed the call is unknown: ask again one row at a time.
        return [predict_each(predictor, model, choice, [row])[0] for row in rows]
    return [value if math.isfinite(value) else f"the model predicted {value}" for value in values]


class Quarantine:
    """Count each device model's failed readings; take a model out of service after `limit` in a row.

    Thread-safe: the worker records, the twin report and the `stats` method read.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._streaks: dict[str, int] = {}
        self._failures: Counter[str] = Counter()
        self._quarantined: dict[str, str] = {}

    def record(self, device_id: str, outcomes: Sequence[RowOutcome]) -> str | None:
        """Count a device model's outcomes in reading order; return the error that quarantined it, if one did."""
        quarantined_by = None
        with self._lock:
            streak = self._streaks.get(device_id, 0)
            for outcome in outcomes:
                if not isinstance(outcome, str):  # answered
                    streak = 0
                    continue
                self._failures[device_id] += 1
                streak += 1
                if streak >= self.limit and device_id not in self._quarantined:
                    self._quarantined[device_id] = quarantined_by = outcome
            if streak:
                self._streaks[device_id] = streak
            else:
                self._streaks.pop(device_id, None)
        return quarantined_by

    def quarantined(self) -> list[str]:
        """Return the quarantined devices, sorted."""
        with self._lock:
            return sorted(self._quarantined)

    def failures(self, most: int) -> dict[str, int]:
        """Return the failed readings of the `most` most failing device models."""
        with self._lock:
            return dict(self._failures.most_common(most))

    def reset_counts(self) -> None:
        """Zero the failure counts; the streaks and the quarantine stay."""
        with self._lock:
            self._failures.clear()
