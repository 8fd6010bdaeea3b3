"""IoT Edge routes: parse `FROM <source> [WHERE <condition>] INTO <sink>` and evaluate them on messages.

The offline edgeHub stand-in executes the deployment manifest's `$edgeHub` routes with this package,
and the manifest validator uses it to reject routes that the real edgeHub would reject. Behaviour
follows Microsoft's documentation ("Learn how to deploy modules and establish routes in IoT Edge",
"IoT Hub message routing query syntax", "IoT Hub query language") and, where the documentation is
silent, the open-source edgeHub (Azure/iotedge, Microsoft.Azure.Devices.Routing.Core):

- Sources: `/*`, `/twinChangeNotifications`, `/messages/*`, `/messages/modules/*`,
  `/messages/modules/<moduleId>/*`, `/messages/modules/<moduleId>/outputs/*` and
  `/messages/modules/<moduleId>/outputs/<output>`. Sinks: `$upstream` and
  `BrokeredEndpoint("/modules/<moduleId>/inputs/<input>")`.
- Conditions are typed when the route is parsed, as edgeHub compiles them: message properties
  (application and system) are strings, so `severity > 2` is a parse error and must be written
  `AS_NUMBER(severity) > 2`. `$body.a.b` fields are typed only at run time.
- Evaluation is three-valued (true, false, undefined): a comparison with a missing property,
  a body field of a non-JSON message or a value of another type is undefined, and a route
  routes only when its condition is exactly true.

Modules: `message` (the message and its parsed body), `values` (undefined and the value types),
`expressions` (condition nodes and their evaluation), `functions` (the built-in functions),
`lexer` and `conditions` (tokens and the condition parser), `parser` (the route statement and the
routes object), `route` (routes, sources, sinks and routing a message), `errors` (RouteError).
"""

from edgefleet.routes.errors import RouteError
from edgefleet.routes.message import Message, MessageKind
from edgefleet.routes.parser import parse_route, parse_routes
from edgefleet.routes.route import EndpointRef, Route, RouteSink, RouteSource, referenced_endpoints, route_message

__all__ = [
    "EndpointRef",
    "Message",
    "MessageKind",
    "Route",
    "RouteError",
    "RouteSink",
    "RouteSource",
    "parse_route",
    "parse_routes",
    "referenced_endpoints",
    "route_message",
]
