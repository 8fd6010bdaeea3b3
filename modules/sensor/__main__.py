"""Run the sensor module: settings → module client → SensorService.run(stop_event)."""

from __future__ import annotations

import sys

from edgefleet.errors import StartError
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals
from modules.runtime import create_module_client
from modules.sensor.service import SensorService
from modules.sensor.settings import SensorSettings


def main() -> int:
    """Start the module; exit 2 with a message on a configuration mistake."""
    try:
        settings = load_settings(SensorSettings)
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        return SensorService(settings, create_module_client()).run(stop_event)
    except StartError as err:
        print(f"sensor: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
