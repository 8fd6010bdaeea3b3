"""The one code-side declaration of each edge module's inputs and outputs.

Module code takes the names it sends to and listens on from here (`SENSOR.output("telemetry")`),
and `edgefleet manifest validate` checks the deployment manifest's routes against the same
declarations: a route that reads an output no code sends to, or feeds an input no code listens on,
is an error; a declared output or input that no route carries is a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from edgefleet.errors import EdgefleetError

logger = logging.getLogger(__name__)

__all__ = [
    "ALERTS",
    "DEADLETTER",
    "FIELDBROKER",
    "INFERENCE",
    "MODULES",
    "PREDICTIONS",
    "SENSOR",
    "TELEMETRY",
    "EndpointError",
    "ModuleEndpoints",
]

# Endpoint names as they appear in routes: `/messages/modules/<m>/outputs/<name>` and
# `BrokeredEndpoint("/modules/<m>/inputs/<name>")`. No '/', quotes, '*', parentheses or spaces.
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

TELEMETRY: Final = "telemetry"
DEADLETTER: Final = "deadletter"
PREDICTIONS: Final = "predictions"
ALERTS: Final = "alerts"


class EndpointError(EdgefleetError):
    """Raise when code asks for an input or output its module does not declare."""


@dataclass(frozen=True, slots=True)
class ModuleEndpoints:
    """The inputs a module listens on and the outputs it sends to."""

    name: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    # False for a module that never connects to edgeHub (the field broker): the stand-in runs no broker for it.
    edgehub_client: bool = True

    def __post_init__(self) -> None:
        for kind, names in (("input", self.inputs), ("output", self.outputs)):
            for endpoint in names:
                if not _ENDPOINT_NAME.fullmatch(endpoint):
                    raise EndpointError(
                        f'module "{self.name}": {kind} name "{endpoint}" must use only letters, digits, "_" and "-"'
                    )
            if len(set(names)) != len(names):
                raise EndpointError(f'module "{self.name}": {kind}s are declared twice in {names}')

    def output(self, name: str) -> str:
        """Return the output name, raising if this module does not declare it."""
        if name not in self.outputs:
            raise EndpointError(
                f'module "{self.name}" has no output "{name}" (declared: {", ".join(self.outputs) or "none"}); '
                "declare it in edgefleet/endpoints.py and route it in deployment/deployment.template.json"
            )
        return name

    def input(self, name: str) -> str:
        """Return the input name, raising if this module does not declare it."""
        if name not in self.inputs:
            raise EndpointError(
                f'module "{self.name}" has no input "{name}" (declared: {", ".join(self.inputs) or "none"}); '
                "declare it in edgefleet/endpoints.py and route it in deployment/deployment.template.json"
            )
        return name


SENSOR: Final = ModuleEndpoints(name="sensor", inputs=(), outputs=(TELEMETRY, DEADLETTER))
INFERENCE: Final = ModuleEndpoints(name="inference", inputs=(TELEMETRY,), outputs=(PREDICTIONS, DEADLETTER, ALERTS))

# The field devices' broker: a module of the deployment that neither sends nor receives edgeHub messages.
FIELDBROKER: Final = ModuleEndpoints(name="fieldbroker", edgehub_client=False)

MODULES: Final[Mapping[str, ModuleEndpoints]] = MappingProxyType(
    {module.name: module for module in (SENSOR, INFERENCE, FIELDBROKER)}
)
