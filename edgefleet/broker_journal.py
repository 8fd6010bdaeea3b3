"""The broker journal: Mosquitto's write-ahead plugin, where it is installed and how a config loads it.

Mosquitto 2.0 acknowledges a QoS 1 publish before it saves it (it saves by whole snapshots), so a
kill -9 loses every message acknowledged since the last snapshot. The plugin
(`native/broker_journal/edgefleet_journal.c`) appends each message to a journal before Mosquitto
acknowledges it and replays the journal on start. One home for its file name, install location
and configuration lines: the stand-in's brokers, the sink's hub broker and the field broker all
load it this way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Final

__all__ = [
    "JOURNAL_PLUGIN_FILE",
    "MISSING_JOURNAL",
    "journal_config_lines",
    "journal_plugin_for",
    "journal_plugin_path",
    "journal_plugin_paths",
]

logger = logging.getLogger(__name__)

JOURNAL_PLUGIN_FILE: Final = "edgefleet_journal.so"
# `make setup` builds it into the virtualenv; the images copy it to the same place under /opt/venv.
_INSTALL_DIR: Final = Path("lib") / "edgefleet"
MISSING_JOURNAL: Final = (
    "the broker journal plugin is not installed (looked in {places}); run `make setup` (needs gcc "
    "and mosquitto-dev) to build it. Until then a kill -9 of this broker loses the messages it "
    "acknowledged since its last snapshot"
)


def journal_plugin_paths(prefix: Path | None = None) -> tuple[Path, ...]:
    """Return where the plugin may be installed, in the order they are tried."""
    return ((prefix or Path(sys.prefix)) / _INSTALL_DIR / JOURNAL_PLUGIN_FILE,)


def journal_plugin_path(prefix: Path | None = None) -> Path | None:
    """Return the installed plugin, or None when it was not built."""
    return next((path for path in journal_plugin_paths(prefix) if path.is_file()), None)


def journal_plugin_for(broker: str) -> Path | None:
    """Return the installed plugin for this broker, warning what a kill -9 can lose when there is none."""
    plugin = journal_plugin_path()
    if plugin is None:
        places = ", ".join(str(path) for path in journal_plugin_paths())
        logger.warning("%s: %s", broker, MISSING_JOURNAL.format(places=places))
    return plugin


def journal_config_lines(plugin: Path, journal: Path, snapshot: Path, *, sync: bool = False) -> list[str]:
    """Return the mosquitto.conf lines that load the plugin (per listener when settings are per listener)."""
    return [
        f"plugin {plugin}",
        f"plugin_opt_journal {journal}",
        # The persistence file: a new snapshot holds everything journalled before it.
        f"plugin_opt_snapshot {snapshot}",
        f"plugin_opt_sync {str(sync).lower()}",
    ]
