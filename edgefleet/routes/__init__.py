"""IoT Edge routes: parse `FROM <source> [WHERE <condition>] INTO <sink>` and evaluate them on messages.

The offline edgeHub stand-in executes the deployment manifest's `$edgeHub` routes with this package,
and the manifest validator uses it. Behaviour follows the open-source edgeHub (Azure/iotedge,
Microsoft.Azure.Devices.Routing.Core: GrammarLexer.g4, Condition.g4, Route.g4, ConditionVisitor,
QueryValue, CustomMessageSource) and, where the documentation disagrees, edgeHub wins;
tests/edgefleet/routes/test_conformance.py is the row-by-row table with its sources:

- Sources are path prefixes matched ignoring case: `/*`, `/messages[/*]`, `/messages/modules[/*]`,
  `/messages/modules/<m>[/*]`, `/messages/modules/<m>/outputs[/*]`,
  `/messages/modules/<m>/outputs/<o>`, `/twinChangeNotifications`; another path parses but matches
  nothing. Sinks: `$upstream` and `BrokeredEndpoint("/modules/<m>/inputs/<i>")` (one trailing `/`
  allowed, module id exact). Text after the sink is ignored, as edgeHub ignores it.
- Conditions are typed when the route is parsed, as edgeHub compiles them: properties are strings
  (`AS_NUMBER(severity) > 2`), `$body.a.b` values are typed at run time. `||` joins strings, `??`
  coalesces, NOT and unary `-` bind tightest (`NOT (a = 'x')`).
- Evaluation is three-valued: a missing property is undefined, but a `$body` path that selects
  nothing is null (so `$body.level <> 'debug'` is true without a level); `$body` values of different
  types are unequal and ordered bool < number < string < null; objects, arrays and ISO date strings
  are undefined. A route routes only when its condition is exactly true.

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
