"""Errors that carry a message meant for the user, not a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["BundleError", "EdgefleetError", "HistoryError", "StartError", "validation_message"]


class EdgefleetError(Exception):
    """Raise for a user mistake or bad input; the CLI prints the message and exits non-zero."""


class HistoryError(EdgefleetError):
    """Raise when history data cannot be read or lacks required columns."""


class BundleError(EdgefleetError):
    """Raise when a model bundle is missing, malformed or does not match its manifest."""


class StartError(EdgefleetError):
    """Raise when a process cannot start; the message says how to fix it."""


def validation_message(err: ValidationError) -> str:
    """Return invalid settings as a command line reports them: one indented line per problem."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "settings"
        lines.append(f"  {where}: {item['msg']}")
    return "invalid settings:\n" + "\n".join(lines)
