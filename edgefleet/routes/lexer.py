"""Split a route's text into tokens exactly as edgeHub's ANTLR lexer does, and walk them for the parsers.

edgeHub (Azure/iotedge, Microsoft.Azure.Devices.Routing.Core/grammar/GrammarLexer.g4) lexes the whole
route with one lexer: at each position the longest match wins, and on a tie the rule listed first.
That has consequences a hand-written lexer easily misses, all reproduced here:

- an identifier (`ID`) is any run of characters except `()<>@,;:\\"/[]?={}` and white space, so
  `a-1`, `a+b`, `a!`, `a||'x'` and `-x` are single property names (write `a - 1`, `a || 'x'`, `- x`);
- `-5` is one number token, and `e5` is a (malformed) real number, not a name;
- `$name` runs up to `()<>@,;:\\"/?={}` or white space, so `$body.x!=1` reads `$body.x!` then `=1`;
- `||` is string concatenation and `??` is coalesce; `&&` and `==` are not operators;
- `true`, `false`, `null` and `undefined` are lower-case only; keywords are case-insensitive;
- `/* ... */` is a comment; anything else unrecognised is an `unknown` token, an error only if the
  parser reaches it (edgeHub ignores whatever follows the sink).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple, NoReturn

from edgefleet.routes.errors import RouteError
from edgefleet.routes.values import BOOL, NULL, UNDEF, UNDEFINED, Value

__all__ = ["LITERALS", "Token", "TokenCursor", "lex"]


class Token(NamedTuple):
    """One lexical token with its 0-based position in the route text."""

    kind: str  # keyword string unterminated number literal op sysprop ident unknown eof
    text: str
    pos: int
    value: Value = None


_KEYWORDS: Final = frozenset({"select", "from", "where", "into", "and", "or", "not"})
LITERALS: Final[dict[str, tuple[Value, str]]] = {
    "true": (True, BOOL),
    "false": (False, BOOL),
    "null": (None, NULL),
    "undefined": (UNDEFINED, UNDEF),
}
# The lexer rules in GrammarLexer.g4 order (the order breaks ties between matches of equal length).
_RULES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("keyword", re.compile(r"(?i:select|from|where|into)")),
    ("string", re.compile(r"\"(?:\\[\"'\\]|\\u[0-9a-fA-F]{4}|[^\"\\])*\"|'(?:\\[\"'\\]|\\u[0-9a-fA-F]{4}|[^'\\])*'")),
    (
        "unterminated",
        re.compile(r"\"(?:\\[\"'\\]|\\u[0-9a-fA-F]{4}|[^\"\\])*|'(?:\\[\"'\\]|\\u[0-9a-fA-F]{4}|[^'\\])*"),
    ),
    ("integer", re.compile(r"-?[0-9]+")),
    ("hex", re.compile(r"0[xX][0-9a-fA-F]+")),
    ("real", re.compile(r"-?[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|-?[0-9]*[eE][+-]?[0-9]+")),
    ("literal", re.compile(r"true|false|null|undefined")),
    ("op", re.compile(r"!=|<>|<=|>=|\|\||\?\?|[(),+\-*/%=><{}]")),
    ("keyword", re.compile(r"(?i:and|or|not)")),
    ("sysprop", re.compile(r"\$[^()<>@,;:\\\"/?={}\s]+")),
    ("ident", re.compile(r"[^()<>@,;:\\\"/\[\]?={}\s]+")),
)
_SPACE_RE: Final = re.compile(r"[ \t\r\n]+")
_COMMENT_RE: Final = re.compile(r"/\*.*?\*/", re.DOTALL)
_ESCAPE_RE: Final = re.compile(r"\\[Uu]([0-9A-Fa-f]{4})")
_QUOTE_ESCAPE_RE: Final = re.compile(r"\\([\"'\\])")


def lex(text: str) -> list[Token]:
    """Split the whole route text into tokens, ending with an eof token; never raises."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        skipped = _SPACE_RE.match(text, pos) or _COMMENT_RE.match(text, pos)
        if skipped:
            pos = skipped.end()
            continue
        kind, lexeme = _longest_match(text, pos)
        tokens.append(_token(kind, lexeme, pos))
        pos += len(lexeme)
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _longest_match(text: str, pos: int) -> tuple[str, str]:
    """Return the rule and lexeme of the longest match at pos, the earlier rule winning a tie."""
    best_kind, best = "unknown", text[pos]
    best_length = 0
    for kind, pattern in _RULES:
        match = pattern.match(text, pos)
        if match and len(match.group()) > best_length:
            best_kind, best, best_length = kind, match.group(), len(match.group())
    return best_kind, best


def _token(kind: str, lexeme: str, pos: int) -> Token:
    """Build the token for one lexeme, converting literals to their values."""
    if kind == "keyword":
        return Token("keyword", lexeme, pos, lexeme.lower())
    if kind == "string":
        return Token("string", lexeme, pos, unescape(lexeme[1:-1]))
    if kind in ("integer", "real"):
        try:
            number: Value = float(lexeme)
        except ValueError:  # `e5` is a real-number token that .NET cannot parse: edgeHub makes it undefined
            number = UNDEFINED
        return Token("number", lexeme, pos, number)
    if kind == "hex":
        return Token("number", lexeme, pos, float(int(lexeme, 16)))
    return Token(kind, lexeme, pos)


def unescape(body: str) -> str:
    """Resolve `\\uXXXX`, `\\'`, `\\"` and `\\\\` the way edgeHub's ConditionVisitor.Unescape does."""
    return _QUOTE_ESCAPE_RE.sub(lambda m: m.group(1), _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), body))


# Operators of other languages that edgeHub's lexer reads as names, with what to write instead.
_FOREIGN_OPERATORS: Final = {"&&": "AND", "=": "a single =", "!": "NOT or !="}


class TokenCursor:
    """A position in one route's tokens; it never moves past the final eof token."""

    def __init__(self, route_name: str, tokens: list[Token]) -> None:
        self.route_name = route_name
        self.tokens = tokens
        self.index = 0

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        raise RouteError(self.route_name, problem, position)

    def fail_at(self, token: Token, expected: str) -> NoReturn:
        """Raise for an unexpected token, saying what was expected and explaining lexical surprises."""
        if token.kind == "eof":
            self.fail(f"expected {expected} but the route ended", token.pos)
        if token.kind == "unterminated":
            self.fail(f"unterminated string starting with {token.text[0]}", token.pos)
        if token.kind == "unknown":
            self.fail(f"unexpected character '{token.text}'", token.pos)
        hint = _FOREIGN_OPERATORS.get(token.text)
        if hint is not None:
            # A second '=' where a value should be is the remains of '=='.
            shown = "==" if token.text == "=" else token.text
            self.fail(f"'{shown}' is not an operator in edgeHub routes (use {hint})", token.pos)
        self.fail(f"expected {expected}, found '{token.text}'", token.pos)

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
