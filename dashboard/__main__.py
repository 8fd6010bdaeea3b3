"""Run the fleet dashboard: settings → hub feed and Bokeh server, until SIGTERM or SIGINT."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dashboard.service import run_dashboard
from dashboard.settings import DashboardSettings, parse_flags
from edgefleet.errors import EdgefleetError
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the dashboard; exit 2 with a message on a configuration mistake."""
    try:
        settings = load_settings(DashboardSettings, **parse_flags(argv))
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        run_dashboard(settings, stop_event)
        return 0
    except EdgefleetError as err:
        print(f"dashboard: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
