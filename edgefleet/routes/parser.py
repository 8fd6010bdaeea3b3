"""Parse the route statement `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>` and the routes object."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final, NoReturn

from edgefleet.routes.conditions import parse_condition
from edgefleet.routes.errors import RouteError
from edgefleet.routes.expressions import Expr
from edgefleet.routes.lexer import TokenCursor, lex
from edgefleet.routes.route import MAX_PRIORITY, MIN_PRIORITY, Route, RouteSink, RouteSource, SourceKind

logger = logging.getLogger(__name__)

__all__ = ["parse_route", "parse_routes"]

_WORD_RE: Final = re.compile(r"[A-Za-z]+")
_NON_SPACE_RE: Final = re.compile(r"\S+")
_NAME = r"[^\s/\"'*()]+"
_FIXED_SOURCES: Final[dict[str, SourceKind]] = {
    "/*": "all",
    "/twinChangeNotifications": "twin_change_notifications",
    "/messages/*": "messages",
    "/messages/modules/*": "modules",
}
_MODULE_SOURCE_RE: Final = re.compile(rf"/messages/modules/({_NAME})/(?:\*|outputs/\*|outputs/({_NAME}))")
_ENDPOINT_RE: Final = re.compile(rf"/modules/({_NAME})/inputs/({_NAME})")
_SOURCE_FORMS = (
    "/*, /twinChangeNotifications, /messages/*, /messages/modules/*, /messages/modules/<moduleId>/*, "
    "/messages/modules/<moduleId>/outputs/* or /messages/modules/<moduleId>/outputs/<output>"
)
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
    """Parser for one route statement; positions are 0-based offsets into the route text.

    The source path is read from the text (it is a path, not tokens); the rest is lexed in one go,
    so a lexical error anywhere after the source is reported before a grammar error.
    """

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        raise RouteError(self.name, problem, position)

    def parse(self, priority: int | None, time_to_live_secs: int | None) -> Route:
        """Parse the whole route."""
        source, source_end = self.parse_from()
        tokens = TokenCursor(self.name, lex(self.name, self.text, source_end))
        condition = self.parse_where(tokens)
        self.expect_into(tokens, condition)
        sink = self.parse_sink(tokens)
        self.expect_end(tokens)
        return Route(self.name, source, condition, sink, self.text, priority, time_to_live_secs)

    # -- FROM ------------------------------------------------------------------------------

    def parse_from(self) -> tuple[RouteSource, int]:
        """Parse `[SELECT *] FROM <source>`; return the source and the position after its path."""
        text = self.text
        pos = self.skip_select(self.skip_space(0))
        word = _WORD_RE.match(text, pos)
        if not word or word.group().lower() != "from":
            self.fail("expected FROM", pos)
        pos = self.skip_space(word.end())
        path = _NON_SPACE_RE.match(text, pos)
        if path is None:
            self.fail("expected a source path after FROM", pos)
        return self.parse_source(path.group(), pos), path.end()

    def skip_select(self, pos: int) -> int:
        """Skip a leading `SELECT *` (edgeHub's grammar accepts it); return where FROM should start."""
        word = _WORD_RE.match(self.text, pos)
        if not word or word.group().lower() != "select":
            return pos
        pos = self.skip_space(word.end())
        if not self.text.startswith("*", pos):
            self.fail("expected '*' after SELECT", pos)
        return self.skip_space(pos + 1)

    def skip_space(self, pos: int) -> int:
        """Return the first non-space position at or after pos."""
        while pos < len(self.text) and self.text[pos].isspace():
            pos += 1
        return pos

    def parse_source(self, path: str, pos: int) -> RouteSource:
        """Parse the source path that starts at pos."""
        if path in _FIXED_SOURCES:
            return RouteSource(_FIXED_SOURCES[path])
        match = _MODULE_SOURCE_RE.fullmatch(path)
        if match is None:
            self.fail(f"unknown source path '{path}' (expected {_SOURCE_FORMS})", pos)
        module, output = match.group(1), match.group(2)
        if output is not None:
            return RouteSource("module_output", module, output)
        if path.endswith("/outputs/*"):
            return RouteSource("module_outputs", module)
        return RouteSource("module", module)

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
            expected = "INTO" if condition is not None else "WHERE or INTO"
            found = "" if token.kind == "eof" else f", found '{token.text}'"
            self.fail(f"expected {expected}{found}", token.pos)
        tokens.advance()

    def parse_sink(self, tokens: TokenCursor) -> RouteSink:
        """Parse $upstream or BrokeredEndpoint("/modules/<m>/inputs/<i>")."""
        token = tokens.advance()
        if token.kind == "sysprop" and token.text.lower() == "$upstream":
            return RouteSink("upstream")
        if token.kind == "ident" and token.text.lower() == "brokeredendpoint":
            return self.parse_brokered_endpoint(tokens)
        if token.kind == "eof":
            self.fail(f"expected a sink after INTO ({_SINK_FORMS})", token.pos)
        self.fail(f"unknown sink '{token.text}' (expected {_SINK_FORMS})", token.pos)

    def parse_brokered_endpoint(self, tokens: TokenCursor) -> RouteSink:
        """Parse the `("/modules/<m>/inputs/<i>")` after BrokeredEndpoint."""
        if not tokens.at_op("("):
            self.fail("expected '(' after BrokeredEndpoint", tokens.peek().pos)
        opening = tokens.advance()
        address = tokens.advance()
        if address.kind != "string" or not isinstance(address.value, str):
            self.fail('BrokeredEndpoint needs a quoted address such as "/modules/<m>/inputs/<i>"', address.pos)
        match = _ENDPOINT_RE.fullmatch(address.value)
        if match is None:
            self.fail(
                f"bad BrokeredEndpoint address '{address.value}' (expected /modules/<moduleId>/inputs/<input>)",
                address.pos,
            )
        if not tokens.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        tokens.advance()
        return RouteSink("module_input", match.group(1), match.group(2))

    def expect_end(self, tokens: TokenCursor) -> None:
        """Fail if anything follows the sink."""
        token = tokens.peek()
        if token.kind != "eof":
            self.fail(f"unexpected '{token.text}' after the sink", token.pos)
