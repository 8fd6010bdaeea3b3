"""Split a route's text after the source path into tokens, and walk them for the parsers."""

from __future__ import annotations

import re
from typing import Final, NamedTuple, NoReturn

from edgefleet.routes.errors import RouteError
from edgefleet.routes.values import BOOL, NULL, UNDEF, UNDEFINED, Value

__all__ = ["LITERALS", "Token", "TokenCursor", "lex"]


class Token(NamedTuple):
    """One lexical token with its 0-based position in the route text."""

    kind: str  # number string literal ident keyword sysprop op eof
    text: str
    pos: int
    value: Value = None


_KEYWORDS: Final = frozenset({"and", "or", "not", "where", "into", "from", "select"})
# Literals are lower-case only, as in edgeHub's lexer; keywords are case-insensitive.
LITERALS: Final[dict[str, tuple[Value, str]]] = {
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
_HEX4_RE: Final = re.compile(r"[0-9a-fA-F]{4}")
_STRING_ESCAPES: Final = {"'": "'", '"': '"', "\\": "\\"}
# Operators of other languages, and edgeHub extensions this router leaves out, with what to write instead.
_FOREIGN_OPERATORS: Final = {"==": "=", "&&": "AND", "||": "OR, or CONCAT() to join strings", "??": "IS_DEFINED()"}


def lex(route_name: str, text: str, start: int) -> list[Token]:
    """Split the route text from `start` on into tokens, ending with an eof token."""
    tokens: list[Token] = []
    pos = start
    while pos < len(text):
        pair = text[pos : pos + 2]
        if pair in _FOREIGN_OPERATORS:
            raise RouteError(route_name, f"'{pair}' is not an operator here (use {_FOREIGN_OPERATORS[pair]})", pos)
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise RouteError(route_name, f"unexpected character '{text[pos]}'", pos)
        kind = match.lastgroup or ""
        lexeme = match.group()
        if kind == "ws":
            pass
        elif kind == "quote":
            token, pos = _lex_string(route_name, text, pos)
            tokens.append(token)
            continue
        elif kind == "number":
            if match.end() < len(text) and _IDENT_CHAR.match(text, match.end()):
                raise RouteError(route_name, f"malformed number '{lexeme}{text[match.end()]}'", pos)
            number = float(int(lexeme, 16)) if lexeme[:2] in ("0x", "0X") else float(lexeme)
            tokens.append(Token("number", lexeme, pos, number))
        elif kind == "ident":
            tokens.append(_word_token(lexeme, pos))
        else:
            tokens.append(Token(kind, lexeme, pos))
        pos = match.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _word_token(lexeme: str, pos: int) -> Token:
    """Classify a word as a keyword (its value the lower-cased word), a literal or an identifier."""
    lowered = lexeme.lower()
    if lowered in _KEYWORDS:
        return Token("keyword", lexeme, pos, lowered)
    if lexeme in LITERALS:
        return Token("literal", lexeme, pos)
    return Token("ident", lexeme, pos)


def _lex_string(route_name: str, text: str, start: int) -> tuple[Token, int]:
    """Read the quoted string literal starting at `start`; return it and the position after it."""
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return Token("string", text[start : pos + 1], start, "".join(chars)), pos + 1
        if char == "\\":
            follower = text[pos + 1 : pos + 2]
            if follower in _STRING_ESCAPES:
                chars.append(_STRING_ESCAPES[follower])
                pos += 2
                continue
            hex_digits = text[pos + 2 : pos + 6]
            if follower in ("u", "U") and _HEX4_RE.fullmatch(hex_digits):
                chars.append(chr(int(hex_digits, 16)))
                pos += 6
                continue
            raise RouteError(route_name, "invalid escape in string (allowed: \\', \\\", \\\\, \\uXXXX)", pos)
        chars.append(char)
        pos += 1
    raise RouteError(route_name, f"unterminated string starting with {quote}", start)


class TokenCursor:
    """A position in one route's tokens; it never moves past the final eof token."""

    def __init__(self, route_name: str, tokens: list[Token]) -> None:
        self.route_name = route_name
        self.tokens = tokens
        self.index = 0

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        raise RouteError(self.route_name, problem, position)

    def peek(self) -> Token:
        """Return the current token."""
        return self.tokens[self.index]

    def advance(self) -> Token:
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
