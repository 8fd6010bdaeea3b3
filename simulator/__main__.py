"""Run the field-device simulator: `python -m simulator --profile PROFILE --host HOST --port PORT`."""

from __future__ import annotations

import sys

from simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
