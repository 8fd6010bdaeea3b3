"""Parse the route statement `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>` and the routes object."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NoReturn

from edgefleet.routes.conditions import parse_condition
from edgefleet.routes.errors import RouteError
from edgefleet.routes.expressions import Expr
from edgefleet.routes.lexer import TokenCursor, lex
from edgefleet.routes.route import MAX_PRIORITY, MIN_PRIORITY, Route, RouteSink, RouteSource

logger = logging.getLogger(__name__)

__all__ = ["parse_route", "parse_routes"]

_SINK_FORMS = '$upstream or BrokeredEndpoint("/modules/<moduleId>/inputs/<input>")'
_ROUTE_OBJECT_KEYS = frozenset({"route", "priority", "timeToLiveSecs"})


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


def _parse_route_object(name: str, spec: Mapping[object, object]) -> Route:
    """Parse the schema-1.1 object form {route, priority, timeToLiveSecs}."""
    unknown = sorted(str(key) for key in spec if key not in _ROUTE_OBJECT_KEYS)
    if unknown:
        raise RouteError(name, f"unknown key(s) {', '.join(unknown)} (expected route, priority, timeToLiveSecs)")
    text = spec.get("route")
    if not isinstance(text, str):
        raise RouteError(name, "the route object needs a 'route' string")
    priority = _checked_priority(name, spec.get("priority"))
    ttl = _checked_time_to_live(name, spec.get("timeToLiveSecs"))
    return parse_route(name, text, priority=priority, time_to_live_secs=ttl)


def _checked_priority(name: str, priority: object) -> int | None:
    """Return the route object's priority, which must be absent or an integer from 0 to 9."""
    if priority is None:
        return None
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise RouteError(name, f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    return priority


def _checked_time_to_live(name: str, ttl: object) -> int | None:
    """Return the route object's timeToLiveSecs, which must be absent or a positive integer."""
    if ttl is None:
        return None
    if type(ttl) is not int or ttl <= 0:
        raise RouteError(name, f"timeToLiveSecs must be a positive integer, not {ttl!r}")
    return ttl


def parse_route(name: str, text: str, *, priority: int | None = None, time_to_live_secs: int | None = None) -> Route:
    """Parse one route string, raising RouteError with the position of the first problem."""
    if not isinstance(text, str):
        raise RouteError(name, f"a route must be a string, not {type(text).__name__}")
    return _RouteParser(name, text).parse(priority, time_to_live_secs)


class _RouteParser:
    """Parser for one route statement, following edgeHub's Route.g4 and RouteFactory.

    Positions are 0-based offsets into the route text. As in edgeHub, the source is a path of
    `/`-separated names or `*`, and whatever follows the sink is ignored (kept in `Route.ignored`
    so that the validator can warn about it).
    """

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        raise RouteError(self.name, problem, position)

    def parse(self, priority: int | None, time_to_live_secs: int | None) -> Route:
        """Parse the whole route."""
        tokens = TokenCursor(self.name, lex(self.text))
        if tokens.at_keyword("select"):
            tokens.advance()
            if not tokens.at_op("*"):
                tokens.fail_at(tokens.peek(), "'*' after SELECT")
            tokens.advance()
        if not tokens.at_keyword("from"):
            self.fail("expected FROM", tokens.peek().pos)
        tokens.advance()
        source = self.parse_source(tokens)
        condition = self.parse_where(tokens)
        self.expect_into(tokens, condition)
        sink = self.parse_sink(tokens)
        rest = tokens.peek()
        ignored = "" if rest.kind == "eof" else self.text[rest.pos :].strip()
        return Route(self.name, source, condition, sink, self.text, priority, time_to_live_secs, ignored)

    # -- FROM ------------------------------------------------------------------------------

    def parse_source(self, tokens: TokenCursor) -> RouteSource:
        """Parse the source path: one or more `/` followed by a name or `*`."""
        if not tokens.at_op("/"):
            tokens.fail_at(tokens.peek(), "a source path such as /messages/* after FROM")
        start = tokens.peek().pos
        parts: list[str] = []
        while tokens.at_op("/"):
            tokens.advance()
            item = tokens.advance()
            if not (item.kind == "ident" or (item.kind == "op" and item.text == "*")):
                why = "" if item.kind in ("eof", "unknown") else " (a keyword, literal or number cannot name a module)"
                tokens.fail_at(item, f"a name or '*' in the source path{why}")
            parts.append(f"/{item.text}")
        return RouteSource.from_path("".join(parts), start)

    # -- WHERE and INTO ----------------------------------------------------------------------

    def parse_where(self, tokens: TokenCursor) -> Expr | None:
        """Parse `WHERE <condition>` if the route has one."""
        if not tokens.at_keyword("where"):
            return None
        tokens.advance()
        if tokens.peek().kind == "eof" or tokens.at_keyword("into"):
            self.fail("expected a condition after WHERE", tokens.peek().pos)
        return parse_condition(tokens)

    def expect_into(self, tokens: TokenCursor, condition: Expr | None) -> None:
        """Move past INTO, or fail saying what came instead."""
        token = tokens.peek()
        if not tokens.at_keyword("into"):
            if token.kind == "op" and token.text == ")":
                self.fail("unbalanced parentheses: ')' without a matching '('", token.pos)
            tokens.fail_at(token, "INTO" if condition is not None else "WHERE or INTO")
        tokens.advance()

    def parse_sink(self, tokens: TokenCursor) -> RouteSink:
        """Parse $upstream or BrokeredEndpoint("/modules/<m>/inputs/<i>") (both names case-insensitive)."""
        token = tokens.advance()
        if token.kind == "sysprop" and token.text.lower() == "$upstream":
            return RouteSink("upstream")
        if token.kind == "ident" and tokens.at_op("("):
            if token.text.lower() != "brokeredendpoint":
                self.fail(f"unknown sink '{token.text}' (expected {_SINK_FORMS})", token.pos)
            return self.parse_brokered_endpoint(tokens)
        if token.kind == "eof":
            self.fail(f"expected a sink after INTO ({_SINK_FORMS})", token.pos)
        self.fail(f"unknown sink '{token.text}' (expected {_SINK_FORMS})", token.pos)

    def parse_brokered_endpoint(self, tokens: TokenCursor) -> RouteSink:
        """Parse the `("/modules/<m>/inputs/<i>")` after BrokeredEndpoint, as edgeHub's EndpointFactory."""
        opening = tokens.advance()
        address = tokens.advance()
        if address.kind != "string":
            self.fail('BrokeredEndpoint needs a quoted address such as "/modules/<m>/inputs/<i>"', address.pos)
        if not tokens.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        tokens.advance()
        # EndpointFactory: the raw text between the quotes, trimmed, one leading and one trailing '/'
        # dropped, split on '/' into exactly four parts, the 2nd the module and the 4th the input.
        raw = address.text[1:-1].strip()
        raw = raw[1:] if raw.startswith("/") else raw
        raw = raw[:-1] if raw.endswith("/") else raw
        parts = raw.split("/")
        if len(parts) != 4 or not parts[1].strip() or not parts[3].strip():
            self.fail(
                f"bad BrokeredEndpoint address '{address.text[1:-1]}' (expected /modules/<moduleId>/inputs/<input>)",
                address.pos,
            )
        return RouteSink("module_input", parts[1], parts[3], (parts[0], parts[2]))
