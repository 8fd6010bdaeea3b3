"""Run the `edgefleet` CLI as `python -m edgefleet_cli`."""

import sys

from edgefleet_cli.cli import main

sys.exit(main())
