"""Errors that carry a message meant for the user, not a traceback."""


class EdgefleetError(Exception):
    """Raise for a user mistake or bad input; the CLI prints the message and exits non-zero."""


class HistoryError(EdgefleetError):
    """Raise when history data cannot be read or lacks required columns."""


class BundleError(EdgefleetError):
    """Raise when a model bundle is missing, malformed or does not match its manifest."""


class StartError(EdgefleetError):
    """Raise when a process cannot start; the message says how to fix it."""
