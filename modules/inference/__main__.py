"""Run the inference module: settings → journal → module client → InferenceService.run(stop_event)."""

from __future__ import annotations

import sys

from edgefleet.errors import EdgefleetError
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals
from modules.inference.inbox import JOURNAL_DIR, open_journal
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from modules.runtime import create_module_client


def main() -> int:
    """Start the module; exit 2 with a message on a configuration mistake or a refused bundle."""
    try:
        settings = load_settings(InferenceSettings)
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        # Before the client: an unwritable STATE_DIR is a configuration mistake to fix, said first.
        journal = open_journal(settings.state_dir / JOURNAL_DIR)
        return InferenceService(settings, create_module_client(), journal).run(stop_event)
    except EdgefleetError as err:
        print(f"inference: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
