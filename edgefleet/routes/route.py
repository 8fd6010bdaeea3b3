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
    "message_source",
    "referenced_endpoints",
    "route_message",
]

SourceKind = Literal[
    "all", "twin_change_notifications", "messages", "modules", "module", "module_outputs", "module_output", "other"
]
SinkKind = Literal["upstream", "module_input"]

MIN_PRIORITY = 0  # highest priority
MAX_PRIORITY = 9  # lowest priority; a route without one gets edgeHub's default (lowest)


def message_source(message: Message) -> str:
    """Return the message's source path as edgeHub's RoutingMessageConverter names it, lower-cased."""
    if message.kind == "twin_change_notification":
        return "/twinchangenotifications/"
    module = message.connection_module_id
    if module is None:
        return "/messages/"  # a downstream device's telemetry
    if message.output is None:
        return f"/messages/modules/{module}/".lower()
    return f"/messages/modules/{module}/outputs/{message.output}/".lower()


@dataclass(frozen=True, slots=True)
class RouteSource:
    """Where a route takes messages from: a path prefix, with the module and output it names if any.

    edgeHub (CustomMessageSource, BaseMessageSource) trims a trailing `*` and `/` from the route's
    path and takes every message whose source path starts with it, ignoring case: `/messages/*` and
    `/messages` take all telemetry, `/messages/modules/m` every message of module m (with or without
    an output), `/messages/modules/m/outputs` those sent through an output. A path of another shape
    is accepted but matches no message (kind "other", its normalised path in `path`).
    """

    kind: SourceKind
    module: str | None = None
    output: str | None = None
    path: str | None = None

    @classmethod
    def from_path(cls, text: str, pos: int = 0) -> RouteSource:
        """Normalise a source path as edgeHub does and classify it."""
        path = text.strip().rstrip("*")
        if len(path) > 1:
            path = path.rstrip("/")
        parts = [part for part in path.split("/")[1:] if part]
        words = [part.lower() for part in parts]
        if not parts:
            return cls("all")
        if words == ["twinchangenotifications"]:
            return cls("twin_change_notifications")
        if words[:1] != ["messages"] or len(parts) > 5 or (len(parts) >= 2 and words[1] != "modules"):
            return cls("other", path=path)
        if len(parts) >= 4 and words[3] != "outputs":
            return cls("other", path=path)
        kinds: tuple[SourceKind, ...] = ("messages", "modules", "module", "module_outputs", "module_output")
        kind = kinds[len(parts) - 1]
        module = parts[2] if len(parts) >= 3 else None
        output = parts[4] if len(parts) == 5 else None
        return cls(kind, module, output)

    @property
    def prefix(self) -> str:
        """Return the lower-cased source-path prefix a message's source must start with."""
        if self.kind == "other":
            return f"{self.path}/".lower()
        paths = {
            "all": "/",
            "twin_change_notifications": "/twinchangenotifications/",
            "messages": "/messages/",
            "modules": "/messages/modules/",
            "module": f"/messages/modules/{self.module}/",
            "module_outputs": f"/messages/modules/{self.module}/outputs/",
            "module_output": f"/messages/modules/{self.module}/outputs/{self.output}/",
        }
        return paths[self.kind].lower()

    def matches(self, message: Message) -> bool:
        """Return whether the message comes from this source (module and output names ignore case)."""
        return message_source(message).startswith(self.prefix)

    def __str__(self) -> str:
        paths = {
            "all": "/*",
            "twin_change_notifications": "/twinChangeNotifications",
            "messages": "/messages/*",
            "modules": "/messages/modules/*",
            "module": f"/messages/modules/{self.module}/*",
            "module_outputs": f"/messages/modules/{self.module}/outputs/*",
            "module_output": f"/messages/modules/{self.module}/outputs/{self.output}",
            "other": str(self.path),
        }
        return paths[self.kind]


@dataclass(frozen=True, slots=True)
class RouteSink:
    """Where a route delivers: IoT Hub, or one input of one module.

    edgeHub takes a BrokeredEndpoint's module id as written and looks the module up by exact id,
    so unlike a source the sink's module name is case-sensitive. `labels` are the address's first
    and third parts, which edgeHub does not check (normally "modules" and "inputs").
    """

    kind: SinkKind
    module: str | None = None
    input: str | None = None
    labels: tuple[str, str] = field(default=("modules", "inputs"), compare=False)

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
    ignored: str = field(default="", compare=False)  # text after the sink, which edgeHub ignores

    def matches(self, message: Message) -> bool:
        """Return whether the message comes from this route's source and its condition is true."""
        if not self.source.matches(message):
            return False
        if self.condition is None:
            return True
        # Only true routes: edgeHub converts the result to its Bool, and null, undefined, strings,
        # numbers and non-boolean $body values all convert to false or undefined.
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
