"""IoT Edge routes: parse `FROM <source> [WHERE <condition>] INTO <sink>` and evaluate them on messages.

The offline edgeHub stand-in executes the deployment manifest's `$edgeHub` routes with this module,
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
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, NoReturn

from edgefleet.errors import EdgefleetError

logger = logging.getLogger(__name__)

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

SourceKind = Literal[
    "all", "twin_change_notifications", "messages", "modules", "module", "module_outputs", "module_output"
]
SinkKind = Literal["upstream", "module_input"]
MessageKind = Literal["telemetry", "twin_change_notification"]

MIN_PRIORITY = 0  # highest priority
MAX_PRIORITY = 9  # lowest priority; a route without one gets edgeHub's default (lowest)
_JSON_CONTENT_TYPE = "application/json"
# The documented encodings for `$body` queries; utf-8-sig also accepts a byte-order mark.
_BODY_CODECS: Final = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "utf-32": "utf-32"}


class RouteError(EdgefleetError):
    """Raise when a route cannot be parsed, naming the route, the problem and where it is."""

    def __init__(self, route: str, problem: str, position: int | None = None) -> None:
        self.route = route
        self.problem = problem
        self.position = position
        where = "" if position is None else f" at position {position}"
        super().__init__(f'route "{route}": {problem}{where}')


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


class _Undefined:
    """The query language's `undefined`: a missing property, or an operation on the wrong types."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Final = _Undefined()
# Numbers are floats (the query language has one number type, like JSON); bool is checked with
# `type(v) is bool` everywhere because Python's bool is an int subclass.
Value = str | float | bool | None | _Undefined

STRING, NUMBER, BOOL, NULL, UNDEF, ANY = "string", "number", "bool", "null", "undefined", "any"
_RUNTIME_TYPES: Final[dict[str, type]] = {STRING: str, NUMBER: float}


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message as edgeHub routes it.

    `properties` are the application properties and `system_properties` the system ones, both
    strings as on the wire; system properties are keyed by their query name without `$`
    (`contentType`, `contentEncoding`, `messageId`, `correlationId`, `userId`, ...). The
    connection identities come from the fields, which win over `system_properties`.
    Property names are matched case-insensitively, as IoT Hub does. `output` is None for a
    message sent without an output (and for downstream devices); `kind` separates
    device-to-cloud messages from twin change notifications (`/twinChangeNotifications`).
    """

    connection_device_id: str
    connection_module_id: str | None = None
    output: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    system_properties: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    kind: MessageKind = "telemetry"
    # Per-message evaluation state (lower-cased property maps, the parsed body) shared by every
    # route that looks at this message, so the body is parsed at most once.
    _cache: dict[str, _Context] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _context(self) -> _Context:
        """Return this message's evaluation state, creating it on first use."""
        context = self._cache.get("context")
        if context is None:
            context = self._cache["context"] = _Context(self)
        return context


_NOT_LOADED: Final = object()


class _Context:
    """Evaluation state for one message."""

    __slots__ = ("_body", "has_dollar_properties", "message", "properties", "system_properties")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.properties = {key.lower(): value for key, value in message.properties.items()}
        self.has_dollar_properties = any(key.startswith("$") for key in self.properties)
        system = {key.lower(): value for key, value in message.system_properties.items()}
        system["connectiondeviceid"] = message.connection_device_id
        if message.connection_module_id is None:
            system.pop("connectionmoduleid", None)
        else:
            system["connectionmoduleid"] = message.connection_module_id
        self.system_properties = system
        self._body: object = _NOT_LOADED

    def body(self) -> object:
        """Return the parsed JSON body object, or UNDEFINED when `$body` cannot be queried."""
        if self._body is _NOT_LOADED:
            self._body = _parse_body(self.message, self.system_properties)
        return self._body


def _parse_body(message: Message, system_properties: Mapping[str, str]) -> object:
    """Parse a message body for `$body` queries, or return UNDEFINED when it is not queryable JSON."""
    content_type = system_properties.get("contenttype", "")
    codec = _BODY_CODECS.get(system_properties.get("contentencoding", "").lower())
    if content_type.lower() != _JSON_CONTENT_TYPE or codec is None:
        return UNDEFINED
    try:
        # parse_int=float: the query language has a single number type.
        parsed = json.loads(message.body.decode(codec), parse_int=float)
    except (UnicodeDecodeError, ValueError) as exc:
        logger.warning(
            "message from %s/%s declares JSON but its body is not: %s",
            message.connection_device_id,
            message.connection_module_id,
            exc,
        )
        return UNDEFINED
    # edgeHub parses the body as a JSON object; an array or scalar body has no fields to query.
    return parsed if isinstance(parsed, dict) else UNDEFINED


# ---------------------------------------------------------------------------------------------
# Condition AST
# ---------------------------------------------------------------------------------------------


class Expr(ABC):
    """A node of a parsed WHERE condition."""

    __slots__ = ()

    @property
    @abstractmethod
    def static_type(self) -> str:
        """Return the type known when parsing: string, number, bool, null, undefined or any."""

    @abstractmethod
    def evaluate(self, context: _Context) -> Value:
        """Return the node's value for one message."""


@dataclass(frozen=True, slots=True)
class Constant(Expr):
    """A literal: string, number, true/false, null or undefined."""

    value: Value
    kind: str
    pos: int

    @property
    def static_type(self) -> str:
        """Return the literal's type."""
        return self.kind

    def evaluate(self, context: _Context) -> Value:
        """Return the literal."""
        return self.value


@dataclass(frozen=True, slots=True)
class AppProperty(Expr):
    """An application property, referenced by its bare name."""

    name: str
    pos: int
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())

    @property
    def static_type(self) -> str:
        """Return string: application properties are strings on the wire."""
        return STRING

    def evaluate(self, context: _Context) -> Value:
        """Return the property, or UNDEFINED when the message lacks it."""
        return context.properties.get(self.key, UNDEFINED)


@dataclass(frozen=True, slots=True)
class SystemProperty(Expr):
    """A system property: `$name`, or `{$name}` to skip application properties of that name."""

    name: str
    pos: int
    escaped: bool = False
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())

    @property
    def static_type(self) -> str:
        """Return string: system properties are strings."""
        return STRING

    def evaluate(self, context: _Context) -> Value:
        """Return the property; for `$name` an application property called `$name` wins, as in edgeHub."""
        if not self.escaped and context.has_dollar_properties:
            value = context.properties.get("$" + self.key)
            if value is not None:
                return value
        return context.system_properties.get(self.key, UNDEFINED)


@dataclass(frozen=True, slots=True)
class BodyField(Expr):
    """A field of the JSON body: `$body.a.b[0].c`."""

    path: tuple[str | int, ...]
    text: str
    pos: int
    escaped: bool = False

    @property
    def static_type(self) -> str:
        """Return any: body fields are typed only at run time."""
        return ANY

    def evaluate(self, context: _Context) -> Value:
        """Return the field's primitive value; objects, arrays and missing fields are UNDEFINED."""
        if not self.escaped and context.has_dollar_properties:
            # edgeHub: an application property literally named `$body.x` wins over the body query.
            shadowing = context.properties.get(self.text.lower())
            if shadowing is not None:
                return shadowing
        current: Any = context.body()
        for step in self.path:
            if isinstance(step, str):
                if type(current) is not dict:
                    return UNDEFINED
                current = current.get(step, UNDEFINED)
            else:
                if type(current) is not list or step >= len(current):
                    return UNDEFINED
                current = current[step]
        # Comparisons are defined only between primitive values.
        if current is UNDEFINED or isinstance(current, dict | list):
            return UNDEFINED
        result: Value = current
        return result


@dataclass(frozen=True, slots=True)
class Not(Expr):
    """`NOT operand`."""

    operand: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return bool."""
        return BOOL

    def evaluate(self, context: _Context) -> Value:
        """Negate true/false (null counts as false); NOT undefined stays undefined."""
        value = self.operand.evaluate(context)
        if value is True:
            return False
        if value is False or value is None:
            return True
        return UNDEFINED


@dataclass(frozen=True, slots=True)
class Negate(Expr):
    """Unary minus."""

    operand: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return number."""
        return NUMBER

    def evaluate(self, context: _Context) -> Value:
        """Return the negated number, or UNDEFINED for anything else."""
        value = self.operand.evaluate(context)
        return -value if type(value) is float else UNDEFINED


@dataclass(frozen=True, slots=True)
class Logical(Expr):
    """`left AND right` or `left OR right`, three-valued and short-circuiting."""

    op: Literal["AND", "OR"]
    left: Expr
    right: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return bool."""
        return BOOL

    def evaluate(self, context: _Context) -> Value:
        """Combine with SQL's three-valued logic; null counts as false."""
        left = self.left.evaluate(context)
        if self.op == "AND":
            if left is False or left is None:
                return False
            right = self.right.evaluate(context)
            if right is False or right is None:
                return False
            return True if left is True and right is True else UNDEFINED
        if left is True:
            return True
        right = self.right.evaluate(context)
        if right is True:
            return True
        if (left is False or left is None) and (right is False or right is None):
            return False
        return UNDEFINED


_ORDERINGS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Comparison(Expr):
    """`left <op> right` with one of `= != <> < > <= >=`."""

    op: str
    left: Expr
    right: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return bool."""
        return BOOL

    def evaluate(self, context: _Context) -> Value:
        """Compare values of the same type; anything else (undefined, mixed types) is UNDEFINED."""
        left = self.left.evaluate(context)
        if left is UNDEFINED:
            return UNDEFINED
        right = self.right.evaluate(context)
        if right is UNDEFINED or type(left) is not type(right):
            return UNDEFINED
        if self.op == "=":
            return left == right
        if self.op in ("!=", "<>"):
            return left != right
        # Ordering is defined for numbers and strings (ordinal), not for booleans or null.
        if type(left) is float or type(left) is str:
            return _ORDERINGS[self.op](left, right)
        return UNDEFINED


@dataclass(frozen=True, slots=True)
class Arithmetic(Expr):
    """`left <op> right` with one of `+ - * / %`."""

    op: str
    left: Expr
    right: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return number."""
        return NUMBER

    def evaluate(self, context: _Context) -> Value:
        """Compute on two numbers with IEEE semantics; NaN (0/0, x % 0) is UNDEFINED."""
        left = self.left.evaluate(context)
        right = self.right.evaluate(context)
        if type(left) is not float or type(right) is not float:
            return UNDEFINED
        op = self.op
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            if right == 0.0:
                # Python raises where .NET doubles give ±infinity (or NaN for 0/0).
                if left == 0.0 or left != left:
                    return UNDEFINED
                return math.copysign(math.inf, left) * math.copysign(1.0, right)
            result = left / right
        else:
            if right == 0.0:
                return UNDEFINED
            result = math.fmod(left, right)  # .NET's % keeps the dividend's sign, like fmod
        return UNDEFINED if result != result else result


# ---------------------------------------------------------------------------------------------
# Built-in functions (the set edgeHub implements; names are case-insensitive)
# ---------------------------------------------------------------------------------------------

_WILDCARD = "*"  # a parameter of the is_* functions: accepts any type, including undefined


@dataclass(frozen=True, slots=True)
class _Builtin:
    """One built-in function: its overloads (parameter types), result type and implementation."""

    name: str
    overloads: tuple[tuple[str, ...], ...]
    result: str
    impl: Callable[..., Value]
    variadic: bool = False  # the last parameter repeats (CONCAT)
    total: bool = False  # called with any values (the is_* functions); others get UNDEFINED on bad input

    def signatures_for(self, arity: int) -> tuple[tuple[str, ...], ...]:
        """Return the overloads that take `arity` arguments, with variadic ones expanded."""
        found = []
        for params in self.overloads:
            if len(params) == arity:
                found.append(params)
            elif self.variadic and arity > len(params):
                found.append(params + (params[-1],) * (arity - len(params)))
        return tuple(found)


_NUMBER_TEXT = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*")


def _as_number(value: Value) -> Value:
    """Convert decimal text to a number; numbers pass through, anything else is UNDEFINED."""
    # Python's float() also takes "nan", "inf" and "1_000"; accept only ordinary decimal numbers.
    if type(value) is float:
        return value
    if type(value) is str and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    return UNDEFINED


def _exp(x: float) -> Value:
    """Return e**x, infinity on overflow."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _power(x: float, y: float) -> Value:
    """Return x**y, infinity on overflow and UNDEFINED where it is not a real number."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return UNDEFINED


def _ceiling(x: float) -> Value:
    """Return the smallest integer not below x."""
    return float(math.ceil(x)) if math.isfinite(x) else x


def _floor(x: float) -> Value:
    """Return the largest integer not above x."""
    return float(math.floor(x)) if math.isfinite(x) else x


def _sign(x: float) -> Value:
    """Return -1, 0 or 1."""
    return 0.0 if x == 0 else math.copysign(1.0, x)


def _sqrt(x: float) -> Value:
    """Return the square root, UNDEFINED for negative numbers."""
    return math.sqrt(x) if x >= 0 else UNDEFINED


def _substring(text: str, start: float, length: float | None = None) -> Value:
    """Return `length` characters from zero-based `start` (or the rest of the string)."""
    # SUBSTRING(string, start [, length]): zero-based start; out-of-range arguments are undefined.
    if not start.is_integer() or not 0 <= start <= len(text):
        return UNDEFINED
    begin = int(start)
    if length is None:
        return text[begin:]
    if not length.is_integer() or length < 0:
        return UNDEFINED
    return text[begin : begin + int(length)]


_S, _N = STRING, NUMBER
_BUILTINS: Final[dict[str, _Builtin]] = {
    builtin.name: builtin
    for builtin in (
        _Builtin("abs", ((_N,),), _N, abs),
        _Builtin("exp", ((_N,),), _N, _exp),
        _Builtin("power", ((_N, _N),), _N, _power),
        _Builtin("square", ((_N,),), _N, lambda x: x * x),
        _Builtin("ceiling", ((_N,),), _N, _ceiling),
        _Builtin("floor", ((_N,),), _N, _floor),
        _Builtin("sign", ((_N,),), _N, _sign),
        _Builtin("sqrt", ((_N,),), _N, _sqrt),
        _Builtin("as_number", ((_S,), (_N,)), _N, _as_number),
        _Builtin("is_bool", ((_WILDCARD,),), BOOL, lambda v: type(v) is bool, total=True),
        _Builtin("is_defined", ((_WILDCARD,),), BOOL, lambda v: v is not UNDEFINED, total=True),
        _Builtin("is_null", ((_WILDCARD,),), BOOL, lambda v: v is None, total=True),
        _Builtin("is_number", ((_WILDCARD,),), BOOL, lambda v: type(v) is float, total=True),
        _Builtin("is_string", ((_WILDCARD,),), BOOL, lambda v: type(v) is str, total=True),
        _Builtin("concat", ((_S, _S),), _S, lambda *parts: "".join(parts), variadic=True),
        _Builtin("length", ((_S,),), _N, lambda s: float(len(s))),
        _Builtin("lower", ((_S,),), _S, str.lower),
        _Builtin("upper", ((_S,),), _S, str.upper),
        _Builtin("substring", ((_S, _N), (_S, _N, _N)), _S, _substring),
        _Builtin("index_of", ((_S, _S),), _N, lambda s, fragment: float(s.find(fragment))),
        _Builtin("starts_with", ((_S, _S),), BOOL, str.startswith),
        _Builtin("ends_with", ((_S, _S),), BOOL, str.endswith),
        _Builtin("contains", ((_S, _S),), BOOL, lambda s, fragment: fragment in s),
    )
}


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A built-in function call such as `STARTS_WITH($connectionModuleId, 'sensor')`."""

    name: str
    args: tuple[Expr, ...]
    pos: int
    builtin: _Builtin = field(repr=False, compare=False)
    # The overloads for this arity as runtime types, resolved once at parse time.
    runtime_signatures: tuple[tuple[type, ...], ...] = field(repr=False, compare=False)

    @property
    def static_type(self) -> str:
        """Return the function's result type."""
        return self.builtin.result

    def evaluate(self, context: _Context) -> Value:
        """Call the function; arguments of the wrong runtime type give UNDEFINED."""
        values = [arg.evaluate(context) for arg in self.args]
        if self.builtin.total:
            return self.builtin.impl(*values)
        for signature in self.runtime_signatures:
            if all(type(value) is expected for value, expected in zip(values, signature, strict=True)):
                result = self.builtin.impl(*values)
                return UNDEFINED if result != result else result  # NaN is not a value here
        return UNDEFINED


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


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


def parse_routes(routes: Mapping[str, object]) -> list[Route]:
    """Parse the `$edgeHub.properties.desired.routes` object: strings or {route, priority, timeToLiveSecs}."""
    parsed = []
    for name, spec in routes.items():
        if isinstance(spec, str):
            parsed.append(parse_route(name, spec))
        elif isinstance(spec, Mapping):
            parsed.append(_parse_route_object(name, spec))
        else:
            raise RouteError(name, f"a route must be a string or an object with 'route', not {type(spec).__name__}")
    logger.debug("parsed %d routes", len(parsed))
    return parsed


_ROUTE_OBJECT_KEYS = frozenset({"route", "priority", "timeToLiveSecs"})


def _parse_route_object(name: str, spec: Mapping[Any, Any]) -> Route:
    """Parse the schema-1.1 object form {route, priority, timeToLiveSecs}."""
    unknown = sorted(str(key) for key in spec if key not in _ROUTE_OBJECT_KEYS)
    if unknown:
        raise RouteError(name, f"unknown key(s) {', '.join(unknown)} (expected route, priority, timeToLiveSecs)")
    text = spec.get("route")
    if not isinstance(text, str):
        raise RouteError(name, "the route object needs a 'route' string")
    priority = spec.get("priority")
    if priority is not None and (type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
        raise RouteError(name, f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    ttl = spec.get("timeToLiveSecs")
    if ttl is not None and (type(ttl) is not int or ttl <= 0):
        raise RouteError(name, f"timeToLiveSecs must be a positive integer, not {ttl!r}")
    return parse_route(name, text, priority=priority, time_to_live_secs=ttl)


def parse_route(name: str, text: str, *, priority: int | None = None, time_to_live_secs: int | None = None) -> Route:
    """Parse one route string, raising RouteError with the position of the first problem."""
    if not isinstance(text, str):
        raise RouteError(name, f"a route must be a string, not {type(text).__name__}")
    return _RouteParser(name, text).parse(priority, time_to_live_secs)


# ---------------------------------------------------------------------------------------------
# Lexer and parser
# ---------------------------------------------------------------------------------------------


class _Token(NamedTuple):
    """One lexical token with its 0-based position in the route text."""

    kind: str  # number string literal ident keyword sysprop op eof
    text: str
    pos: int
    value: Value = None


_KEYWORDS: Final = frozenset({"and", "or", "not", "where", "into", "from", "select"})
# Literals are lower-case only, as in edgeHub's lexer; keywords are case-insensitive.
_LITERALS: Final[dict[str, tuple[Value, str]]] = {
    "true": (True, BOOL),
    "false": (False, BOOL),
    "null": (None, NULL),
    "undefined": (UNDEFINED, UNDEF),
}
# Property names may contain '-' and '.' (edgeHub's identifiers do), so `a-1` is one name: write `a - 1`.
_TOKEN_RE: Final = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<sysprop>\$[A-Za-z0-9_.\[\]-]+)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_.-]*)
    |(?P<op><>|<=|>=|!=|[=<>+\-*/%(),{}])
    |(?P<quote>['"])
    """,
    re.VERBOSE,
)
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$]")
_WORD_RE: Final = re.compile(r"[A-Za-z]+")
_NON_SPACE_RE: Final = re.compile(r"\S+")
_NAME = r"[^\s/\"'*()]+"
_MODULE_SOURCE_RE: Final = re.compile(rf"/messages/modules/({_NAME})/(?:\*|outputs/\*|outputs/({_NAME}))")
_ENDPOINT_RE: Final = re.compile(rf"/modules/({_NAME})/inputs/({_NAME})")
_BODY_STEP_RE: Final = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_SOURCE_FORMS = (
    "/*, /twinChangeNotifications, /messages/*, /messages/modules/*, /messages/modules/<moduleId>/*, "
    "/messages/modules/<moduleId>/outputs/* or /messages/modules/<moduleId>/outputs/<output>"
)
_SINK_FORMS = '$upstream or BrokeredEndpoint("/modules/<moduleId>/inputs/<input>")'
_STRING_ESCAPES: Final = {"'": "'", '"': '"', "\\": "\\"}
# Operators of other languages, and edgeHub extensions this router leaves out, with what to write instead.
_FOREIGN_OPERATORS: Final = {"==": "=", "&&": "AND", "||": "OR, or CONCAT() to join strings", "??": "IS_DEFINED()"}
_COMPARISON_OPS: Final = frozenset({"=", "!=", "<>", "<", ">", "<=", ">="})
_BOOLEAN_OPERANDS: Final = frozenset({BOOL, NULL, UNDEF, ANY})
_PROPERTY_HINT = " (message properties are strings: convert with AS_NUMBER(...))"


class _RouteParser:
    """Recursive-descent parser for one route; positions are 0-based offsets into the route text."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.tokens: list[_Token] = []
        self.index = 0

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        raise RouteError(self.name, problem, position)

    # -- route structure -------------------------------------------------------------------

    def parse(self, priority: int | None, time_to_live_secs: int | None) -> Route:
        """Parse the whole route."""
        text = self.text
        pos = self.skip_space(0)
        word = _WORD_RE.match(text, pos)
        if word and word.group().lower() == "select":
            # edgeHub's grammar also accepts `SELECT * FROM ...`.
            pos = self.skip_space(word.end())
            if not text.startswith("*", pos):
                self.fail("expected '*' after SELECT", pos)
            pos = self.skip_space(pos + 1)
            word = _WORD_RE.match(text, pos)
        if not word or word.group().lower() != "from":
            self.fail("expected FROM", pos)
        pos = self.skip_space(word.end())
        path = _NON_SPACE_RE.match(text, pos)
        if path is None:
            self.fail("expected a source path after FROM", pos)
        source = self.parse_source(path.group(), pos)

        self.tokens = self.lex(path.end())
        self.index = 0
        condition: Expr | None = None
        if self.at_keyword("where"):
            self.index += 1
            if self.peek().kind == "eof" or self.at_keyword("into"):
                self.fail("expected a condition after WHERE", self.peek().pos)
            condition = self.parse_or()
        token = self.peek()
        if not self.at_keyword("into"):
            if token.kind == "op" and token.text == ")":
                self.fail("unbalanced parentheses: ')' without a matching '('", token.pos)
            expected = "INTO" if condition is not None else "WHERE or INTO"
            found = "" if token.kind == "eof" else f", found '{token.text}'"
            self.fail(f"expected {expected}{found}", token.pos)
        self.index += 1
        sink = self.parse_sink()
        token = self.peek()
        if token.kind != "eof":
            self.fail(f"unexpected '{token.text}' after the sink", token.pos)
        return Route(self.name, source, condition, sink, self.text, priority, time_to_live_secs)

    def skip_space(self, pos: int) -> int:
        """Return the first non-space position at or after pos."""
        while pos < len(self.text) and self.text[pos].isspace():
            pos += 1
        return pos

    def parse_source(self, path: str, pos: int) -> RouteSource:
        """Parse the source path that starts at pos."""
        fixed: dict[str, SourceKind] = {
            "/*": "all",
            "/twinChangeNotifications": "twin_change_notifications",
            "/messages/*": "messages",
            "/messages/modules/*": "modules",
        }
        if path in fixed:
            return RouteSource(fixed[path])
        match = _MODULE_SOURCE_RE.fullmatch(path)
        if match is None:
            self.fail(f"unknown source path '{path}' (expected {_SOURCE_FORMS})", pos)
        module, output = match.group(1), match.group(2)
        if output is not None:
            return RouteSource("module_output", module, output)
        if path.endswith("/outputs/*"):
            return RouteSource("module_outputs", module)
        return RouteSource("module", module)

    def parse_sink(self) -> RouteSink:
        """Parse $upstream or BrokeredEndpoint("/modules/<m>/inputs/<i>")."""
        token = self.advance()
        if token.kind == "sysprop" and token.text.lower() == "$upstream":
            return RouteSink("upstream")
        if token.kind == "ident" and token.text.lower() == "brokeredendpoint":
            if not self.at_op("("):
                self.fail("expected '(' after BrokeredEndpoint", self.peek().pos)
            opening = self.advance()
            address = self.advance()
            if address.kind != "string" or not isinstance(address.value, str):
                self.fail('BrokeredEndpoint needs a quoted address such as "/modules/<m>/inputs/<i>"', address.pos)
            match = _ENDPOINT_RE.fullmatch(address.value)
            if match is None:
                self.fail(
                    f"bad BrokeredEndpoint address '{address.value}' (expected /modules/<moduleId>/inputs/<input>)",
                    address.pos,
                )
            if not self.at_op(")"):
                self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
            self.advance()
            return RouteSink("module_input", match.group(1), match.group(2))
        if token.kind == "eof":
            self.fail(f"expected a sink after INTO ({_SINK_FORMS})", token.pos)
        self.fail(f"unknown sink '{token.text}' (expected {_SINK_FORMS})", token.pos)

    # -- lexer -----------------------------------------------------------------------------

    def lex(self, start: int) -> list[_Token]:
        """Split the route text from `start` on into tokens."""
        text = self.text
        tokens: list[_Token] = []
        pos = start
        while pos < len(text):
            pair = text[pos : pos + 2]
            if pair in _FOREIGN_OPERATORS:
                self.fail(f"'{pair}' is not an operator here (use {_FOREIGN_OPERATORS[pair]})", pos)
            match = _TOKEN_RE.match(text, pos)
            if match is None:
                self.fail(f"unexpected character '{text[pos]}'", pos)
            kind = match.lastgroup or ""
            lexeme = match.group()
            if kind == "ws":
                pass
            elif kind == "quote":
                token, pos = self.lex_string(pos)
                tokens.append(token)
                continue
            elif kind == "number":
                if match.end() < len(text) and _IDENT_CHAR.match(text, match.end()):
                    self.fail(f"malformed number '{lexeme}{text[match.end()]}'", pos)
                number = float(int(lexeme, 16)) if lexeme[:2] in ("0x", "0X") else float(lexeme)
                tokens.append(_Token("number", lexeme, pos, number))
            elif kind == "ident":
                lowered = lexeme.lower()
                if lowered in _KEYWORDS:
                    tokens.append(_Token("keyword", lexeme, pos, lowered))
                elif lexeme in _LITERALS:
                    tokens.append(_Token("literal", lexeme, pos))
                else:
                    tokens.append(_Token("ident", lexeme, pos))
            else:
                tokens.append(_Token(kind, lexeme, pos))
            pos = match.end()
        tokens.append(_Token("eof", "", len(text)))
        return tokens

    def lex_string(self, start: int) -> tuple[_Token, int]:
        """Read a quoted string literal starting at `start`."""
        text = self.text
        quote = text[start]
        chars: list[str] = []
        pos = start + 1
        while pos < len(text):
            char = text[pos]
            if char == quote:
                return _Token("string", text[start : pos + 1], start, "".join(chars)), pos + 1
            if char == "\\":
                follower = text[pos + 1 : pos + 2]
                if follower in _STRING_ESCAPES:
                    chars.append(_STRING_ESCAPES[follower])
                    pos += 2
                    continue
                hex_digits = text[pos + 2 : pos + 6]
                if follower in ("u", "U") and re.fullmatch(r"[0-9a-fA-F]{4}", hex_digits):
                    chars.append(chr(int(hex_digits, 16)))
                    pos += 6
                    continue
                self.fail("invalid escape in string (allowed: \\', \\\", \\\\, \\uXXXX)", pos)
            chars.append(char)
            pos += 1
        self.fail(f"unterminated string starting with {quote}", start)

    # -- token helpers ---------------------------------------------------------------------

    def peek(self) -> _Token:
        """Return the current token."""
        return self.tokens[self.index]

    def advance(self) -> _Token:
        """Return the current token and move past it (never past the end)."""
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def at_keyword(self, keyword: str) -> bool:
        """Return whether the current token is this keyword."""
        token = self.tokens[self.index]
        return token.kind == "keyword" and token.value == keyword

    def at_op(self, op: str) -> bool:
        """Return whether the current token is this operator."""
        token = self.tokens[self.index]
        return token.kind == "op" and token.text == op

    # -- expressions: OR < AND < NOT < comparison < + - < * / % < unary minus ------------

    def parse_or(self) -> Expr:
        """Parse `a OR b ...`."""
        left = self.parse_and()
        while self.at_keyword("or"):
            token = self.advance()
            right = self.parse_and()
            self.check_boolean_operands("OR", token.pos, left, right)
            left = Logical("OR", left, right, token.pos)
        return left

    def parse_and(self) -> Expr:
        """Parse `a AND b ...`."""
        left = self.parse_not()
        while self.at_keyword("and"):
            token = self.advance()
            right = self.parse_not()
            self.check_boolean_operands("AND", token.pos, left, right)
            left = Logical("AND", left, right, token.pos)
        return left

    def parse_not(self) -> Expr:
        """Parse `NOT a` (which applies to a whole comparison)."""
        if self.at_keyword("not"):
            token = self.advance()
            operand = self.parse_not()
            if operand.static_type not in (BOOL, NULL, ANY):
                self.fail(f"NOT needs a boolean operand, not a {operand.static_type}", token.pos)
            return Not(operand, token.pos)
        return self.parse_comparison()

    def parse_comparison(self) -> Expr:
        """Parse `a <op> b` with a comparison operator."""
        left = self.parse_additive()
        while self.peek().kind == "op" and self.peek().text in _COMPARISON_OPS:
            token = self.advance()
            right = self.parse_additive()
            left_type, right_type = left.static_type, right.static_type
            if left_type != right_type and ANY not in (left_type, right_type):
                hint = _PROPERTY_HINT if {left_type, right_type} == {STRING, NUMBER} else ""
                self.fail(f"cannot compare a {left_type} with a {right_type}{hint}", token.pos)
            left = Comparison(token.text, left, right, token.pos)
        return left

    def parse_additive(self) -> Expr:
        """Parse `a + b` and `a - b`."""
        left = self.parse_multiplicative()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            token = self.advance()
            right = self.parse_multiplicative()
            left = self.arithmetic(token, left, right)
        return left

    def parse_multiplicative(self) -> Expr:
        """Parse `a * b`, `a / b` and `a % b`."""
        left = self.parse_unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "%"):
            token = self.advance()
            right = self.parse_unary()
            left = self.arithmetic(token, left, right)
        return left

    def parse_unary(self) -> Expr:
        """Parse unary minus."""
        if self.at_op("-"):
            token = self.advance()
            operand = self.parse_unary()
            if operand.static_type not in (NUMBER, ANY):
                self.fail(f"unary '-' needs a number, not a {operand.static_type}", token.pos)
            if isinstance(operand, Constant) and type(operand.value) is float:
                return Constant(-operand.value, NUMBER, token.pos)
            return Negate(operand, token.pos)
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        """Parse a literal, property, body field, function call or parenthesised condition."""
        token = self.advance()
        kind = token.kind
        if kind == "number":
            return Constant(token.value, NUMBER, token.pos)
        if kind == "string":
            return Constant(token.value, STRING, token.pos)
        if kind == "literal":
            value, literal_type = _LITERALS[token.text]
            return Constant(value, literal_type, token.pos)
        if kind == "ident":
            if self.at_op("("):
                return self.parse_call(token)
            return AppProperty(token.text, token.pos)
        if kind == "sysprop":
            return self.system_reference(token, escaped=False)
        if kind == "op" and token.text == "{":
            inner = self.advance()
            if inner.kind != "sysprop":
                self.fail("expected a $property inside '{ }'", inner.pos)
            if not self.at_op("}"):
                self.fail("expected '}' after the escaped system property", self.peek().pos)
            self.advance()
            return self.system_reference(inner, escaped=True)
        if kind == "op" and token.text == "(":
            inner_expr = self.parse_or()
            if not self.at_op(")"):
                self.fail("unbalanced parentheses: '(' is never closed", token.pos)
            self.advance()
            return inner_expr
        if kind == "eof":
            self.fail("expected a value but the route ended", token.pos)
        if kind == "keyword" and token.value == "into":
            self.fail("expected a value before INTO", token.pos)
        if kind == "op" and token.text == ")":
            self.fail("unbalanced parentheses: ')' without a matching '('", token.pos)
        self.fail(f"expected a value, found '{token.text}'", token.pos)

    def parse_call(self, name_token: _Token) -> Expr:
        """Parse a built-in call and check its arguments' types."""
        lowered = name_token.text.lower()
        builtin = _BUILTINS.get(lowered)
        if builtin is None:
            self.fail(f"unknown function '{name_token.text}'", name_token.pos)
        opening = self.advance()  # the '('
        args: list[Expr] = []
        if not self.at_op(")"):
            args.append(self.parse_or())
            while self.at_op(","):
                self.advance()
                args.append(self.parse_or())
        if not self.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        self.advance()
        label = lowered.upper()
        signatures = builtin.signatures_for(len(args))
        if not signatures:
            counts = sorted({len(params) for params in builtin.overloads})
            wanted = " or ".join(str(count) for count in counts) + (" or more" if builtin.variadic else "")
            self.fail(f"{label} takes {wanted} argument(s), not {len(args)}", name_token.pos)
        given = [arg.static_type for arg in args]
        matching = [
            params
            for params in signatures
            if all(param in (_WILDCARD, arg) or arg == ANY for param, arg in zip(params, given, strict=True))
        ]
        if not matching:
            hint = _PROPERTY_HINT if NUMBER in signatures[0] and STRING in given else ""
            self.fail(f"{label}({', '.join(given)}) is not defined{hint}", name_token.pos)
        runtime = tuple(tuple(_RUNTIME_TYPES.get(param, object) for param in params) for params in matching)
        return Call(label, tuple(args), name_token.pos, builtin, runtime)

    def system_reference(self, token: _Token, *, escaped: bool) -> Expr:
        """Turn a `$name` token into a system property or a body field."""
        text = token.text
        lowered = text.lower()
        if lowered.startswith("$body"):
            rest = text[len("$body") :]
            if rest == "" or rest.startswith("["):
                self.fail("query a field of the body, such as $body.a.b ($body itself is not queryable)", token.pos)
            if rest.startswith("."):
                return BodyField(self.body_path(rest, token), text, token.pos, escaped)
        if any(char in text for char in "[]"):
            self.fail(f"'{text}' is not a system property (only $body paths take [index])", token.pos)
        if lowered.startswith("$twin"):
            self.fail("IoT Edge routes cannot filter on twin tags or properties ($twin)", token.pos)
        return SystemProperty(text[1:], token.pos, escaped)

    def body_path(self, rest: str, token: _Token) -> tuple[str | int, ...]:
        """Split the part after `$body` into keys and array indexes."""
        steps: list[str | int] = []
        pos = 0
        while pos < len(rest):
            match = _BODY_STEP_RE.match(rest, pos)
            if match is None:
                self.fail(f"bad $body path '{token.text}'", token.pos + len("$body") + pos)
            key, index = match.group(1), match.group(2)
            steps.append(key if key is not None else int(index))
            pos = match.end()
        return tuple(steps)

    def arithmetic(self, token: _Token, left: Expr, right: Expr) -> Expr:
        """Build an arithmetic node after checking both operands are numbers."""
        for operand in (left, right):
            if operand.static_type not in (NUMBER, ANY):
                hint = _PROPERTY_HINT if operand.static_type == STRING else ""
                self.fail(f"'{token.text}' needs numbers, not a {operand.static_type}{hint}", token.pos)
        return Arithmetic(token.text, left, right, token.pos)

    def check_boolean_operands(self, op: str, pos: int, left: Expr, right: Expr) -> None:
        """Reject AND/OR operands that can never be boolean."""
        for operand in (left, right):
            if operand.static_type not in _BOOLEAN_OPERANDS:
                self.fail(f"{op} needs boolean operands, not a {operand.static_type}", pos)
