"""The umbrella CLI in an image without MQTT (the training image has no paho): every command still parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]

# Block paho as the training image lacks it, then build the whole parser and run `train --help`.
_PROBE = """
import sys
class NoPaho:
    def find_spec(self, name, path=None, target=None):
        if name == "paho" or name.startswith("paho."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the training image has no paho)")
sys.meta_path.insert(0, NoPaho())
from edgefleet_cli.cli import build_parser
build_parser().parse_args(["train", "--help"])
"""


def test_the_cli_parses_its_commands_where_paho_is_not_installed():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: edgefleet train" in result.stdout
