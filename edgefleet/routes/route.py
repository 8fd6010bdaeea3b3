"""A parsed route (source, condition, sink) and routing a message through a deployment's routes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from edgefleet.routes.expressions import Expr
from edgefleet.routes.message import Message

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "EndpointRef",
    "Route",
    "RouteSink",
    "RouteSource",
    "SinkKind",
    "SourceKind",
    "referenced_endpoints",
    "route_message",
]

SourceKind = Literal[
    "all", "twin_change_notifications", "messages", "modules", "module", "module_outputs", "module_output"
]
SinkKind = Literal["upstream", "module_input"]

MIN_PRIORITY = 0  # highest priority
MAX_PRIORITY = 9  # lowest priority; a route without one gets edgeHub's default (lowest)


@dataclass(frozen=True, slots=True)
class RouteSource:
    """Where a route takes messages from."""

    kind: SourceKind
    module: str | None = None
    output: str | None = None

    def matches(self, message: Message) -> bool:
        """Return whether the message comes from this source."""
        kind = self.kind
        if kind == "all":
            return True
        if kind == "twin_change_notifications":
            return message.kind == "twin_change_notification"
        if message.kind != "telemetry":
            return False
        if kind == "messages":
            return True
        if kind == "modules":
            return message.connection_module_id is not None
        if message.connection_module_id != self.module:
            return False
        if kind == "module":  # "through some or no output"
            return True
        if kind == "module_outputs":
            return message.output is not None
        return message.output == self.output

    def __str__(self) -> str:
        paths = {
            "all": "/*",
            "twin_change_notifications": "/twinChangeNotifications",
            "messages": "/messages/*",
            "modules": "/messages/modules/*",
            "module": f"/messages/modules/{self.module}/*",
            "module_outputs": f"/messages/modules/{self.module}/outputs/*",
            "module_output": f"/messages/modules/{self.module}/outputs/{self.output}",
        }
        return paths[self.kind]


@dataclass(frozen=True, slots=True)
class RouteSink:
    """Where a route delivers: IoT Hub, or one input of one module."""

    kind: SinkKind
    module: str | None = None
    input: str | None = None

    def __str__(self) -> str:
        if self.kind == "upstream":
            return "$upstream"
        return f'BrokeredEndpoint("/modules/{self.module}/inputs/{self.input}")'


@dataclass(frozen=True, slots=True)
class EndpointRef:
    """A module endpoint a route names: an output read by a source or an input written by a sink.

    `name` is None when the source takes any output of the module (`.../*`, `.../outputs/*`).
    """

    direction: Literal["output", "input"]
    module: str
    name: str | None


@dataclass(frozen=True, slots=True)
class Route:
    """One parsed route of the `$edgeHub` desired properties."""

    name: str
    source: RouteSource
    condition: Expr | None
    sink: RouteSink
    text: str = field(default="", compare=False)
    priority: int | None = None  # 0 (highest) to 9; None: edgeHub's default, the lowest
    time_to_live_secs: int | None = None  # None: inherits storeAndForwardConfiguration.timeToLiveSecs

    def matches(self, message: Message) -> bool:
        """Return whether the message comes from this route's source and its condition is true."""
        if not self.source.matches(message):
            return False
        if self.condition is None:
            return True
        # A null or undefined result is false, as IoT Hub documents.
        return self.condition.evaluate(message._context()) is True


def route_message(routes: Iterable[Route], message: Message) -> list[RouteSink]:
    """Return the sinks the message goes to, each once, in route order."""
    sinks: list[RouteSink] = []
    for route in routes:
        if route.sink not in sinks and route.matches(message):
            sinks.append(route.sink)
    return sinks


def referenced_endpoints(routes: Iterable[Route]) -> set[EndpointRef]:
    """Return the module outputs read by sources and the module inputs written by sinks."""
    found: set[EndpointRef] = set()
    for route in routes:
        if route.source.module is not None:
            found.add(EndpointRef("output", route.source.module, route.source.output))
        if route.sink.kind == "module_input" and route.sink.module is not None:
            found.add(EndpointRef("input", route.sink.module, route.sink.input))
    return found
