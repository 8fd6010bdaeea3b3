"""Run the offline edgeHub stand-in: settings → upstream → stand-in, until SIGTERM or SIGINT."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edgefleet.errors import EdgefleetError
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals
from edgehub.serve import serve_standin
from edgehub.settings import EdgeHubSettings, parse_flags


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in; exit 2 with a message on a configuration mistake, 3 when it stayed unhealthy."""
    try:
        settings = load_settings(EdgeHubSettings, **parse_flags(argv))
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        return serve_standin(settings, stop_event)
    except EdgefleetError as err:
        print(f"edgehub: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
