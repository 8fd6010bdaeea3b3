"""Run the field broker: settings → rendered mosquitto.conf → Mosquitto as a child, until SIGTERM or SIGINT.

SIGHUP (or a change of the password file, checked every few seconds) reloads the identities.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from edgefleet.errors import EdgefleetError
from edgefleet.health import touch_health
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals
from field_broker.broker import FieldBroker
from field_broker.settings import FieldBrokerSettings, parse_flags

logger = logging.getLogger("field_broker")

TICK_S = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the broker; exit 2 with a message on a configuration mistake, 1 when Mosquitto died."""
    try:
        settings = load_settings(FieldBrokerSettings, **parse_flags(argv))
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        reload_event = threading.Event()
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_event.set())
        broker = FieldBroker(settings).start()
    except EdgefleetError as err:
        print(f"field_broker: {err}", file=sys.stderr)
        return 2
    touch_health(settings.health_file)
    next_check_s = time.monotonic() + settings.reload_check_s
    try:
        # A short tick: SIGTERM and SIGHUP are handled within it, whatever the reload interval.
        while not stop_event.wait(TICK_S):
            if not broker.running():
                logger.error("mosquitto exited with code %s; exiting so that it is restarted", broker.exit_code())
                return 1
            forced = reload_event.is_set()
            if forced or time.monotonic() >= next_check_s:
                reload_event.clear()
                broker.reload_if_changed(force=forced)
                next_check_s = time.monotonic() + settings.reload_check_s
            touch_health(settings.health_file)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
