"""What every process of ours shares at start: validated settings, logging, a stop event on signals.

Each process's `__main__` wires: settings (`load_settings`) → client → `Service(...).run(stop_event)`,
with `stop_event_on_signals()` turning SIGTERM and SIGINT into a clean stop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings

from edgefleet.environment import EnvCheck, unknown_variables
from edgefleet.errors import StartError

logger = logging.getLogger(__name__)

__all__ = ["LogLevel", "configure_logging", "load_settings", "stop_event_on_signals"]

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

# A settings field for `configure_logging`: any case in, upper case out.
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)
]


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Validate settings once at start; raise StartError listing every problem.

    A class with an `env_check` (`EnvCheck`) also refuses variables that look like its settings
    but are none of them (a misspelling is otherwise ignored without a word).
    """
    check = getattr(cls, "env_check", None)
    lines = [f"  {line}" for line in unknown_variables(cls, check, os.environ)] if isinstance(check, EnvCheck) else []
    try:
        settings = cls(**overrides)
    except ValidationError as err:
        prefix = str(cls.model_config.get("env_prefix") or "")
        for problem in err.errors():
            # Field names are the environment variables' names in lower case, after the prefix.
            where = ".".join(str(part) for part in problem["loc"]).upper()
            where = f"{prefix}{where}" if where else "settings"
            lines.append(f"  {where}: {problem['msg'].removeprefix('Value error, ')}")
        raise StartError(f"invalid {cls.__name__}:\n" + "\n".join(lines)) from None
    if lines:
        raise StartError(f"invalid {cls.__name__}:\n" + "\n".join(lines))
    return settings


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps, as container runtimes collect it."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # The SDK logs every reconnect attempt and pipeline stage at INFO.
    for noisy in ("azure.iot.device", "paho"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def stop_event_on_signals() -> threading.Event:
    """Return an event that SIGTERM and SIGINT set (call from the main thread)."""
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        logger.info("Received %s; finishing in-flight messages", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop
