"""Parse a WHERE condition into expression nodes, typing it as edgeHub does when it compiles a route.

Precedence, loosest first: OR, AND, NOT, comparison, `+ -`, `* / %`, unary minus.
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from edgefleet.routes.expressions import (
    AppProperty,
    Arithmetic,
    BodyField,
    Call,
    Comparison,
    Constant,
    Expr,
    Logical,
    Negate,
    Not,
    SystemProperty,
)
from edgefleet.routes.functions import BUILTINS, WILDCARD, Builtin
from edgefleet.routes.lexer import LITERALS, Token, TokenCursor
from edgefleet.routes.values import ANY, BOOL, NULL, NUMBER, RUNTIME_TYPES, STRING, UNDEF

__all__ = ["parse_condition"]

_BODY_STEP_RE: Final = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_COMPARISON_OPS: Final = frozenset({"=", "!=", "<>", "<", ">", "<=", ">="})
_BOOLEAN_OPERANDS: Final = frozenset({BOOL, NULL, UNDEF, ANY})
_PROPERTY_HINT = " (message properties are strings: convert with AS_NUMBER(...))"


def parse_condition(tokens: TokenCursor) -> Expr:
    """Parse the condition starting at the cursor, leaving the cursor on the first token after it."""
    return _ConditionParser(tokens).parse_or()


class _ConditionParser:
    """Recursive-descent parser for one condition; each level parses one precedence of operators."""

    def __init__(self, tokens: TokenCursor) -> None:
        self.tokens = tokens

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        self.tokens.fail(problem, position)

    # -- operators, loosest first ----------------------------------------------------------

    def parse_or(self) -> Expr:
        """Parse `a OR b ...`."""
        left = self.parse_and()
        while self.tokens.at_keyword("or"):
            token = self.tokens.advance()
            right = self.parse_and()
            self.check_boolean_operands("OR", token.pos, left, right)
            left = Logical("OR", left, right, token.pos)
        return left

    def parse_and(self) -> Expr:
        """Parse `a AND b ...`."""
        left = self.parse_not()
        while self.tokens.at_keyword("and"):
            token = self.tokens.advance()
            right = self.parse_not()
            self.check_boolean_operands("AND", token.pos, left, right)
            left = Logical("AND", left, right, token.pos)
        return left

    def parse_not(self) -> Expr:
        """Parse `NOT a` (which applies to a whole comparison)."""
        if self.tokens.at_keyword("not"):
            token = self.tokens.advance()
            operand = self.parse_not()
            if operand.static_type not in (BOOL, NULL, ANY):
                self.fail(f"NOT needs a boolean operand, not a {operand.static_type}", token.pos)
            return Not(operand, token.pos)
        return self.parse_comparison()

    def parse_comparison(self) -> Expr:
        """Parse `a <op> b` with a comparison operator."""
        left = self.parse_additive()
        while self.at_op_in(_COMPARISON_OPS):
            token = self.tokens.advance()
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
        while self.at_op_in(("+", "-")):
            token = self.tokens.advance()
            right = self.parse_multiplicative()
            left = self.arithmetic(token, left, right)
        return left

    def parse_multiplicative(self) -> Expr:
        """Parse `a * b`, `a / b` and `a % b`."""
        left = self.parse_unary()
        while self.at_op_in(("*", "/", "%")):
            token = self.tokens.advance()
            right = self.parse_unary()
            left = self.arithmetic(token, left, right)
        return left

    def parse_unary(self) -> Expr:
        """Parse unary minus."""
        if self.tokens.at_op("-"):
            token = self.tokens.advance()
            operand = self.parse_unary()
            if operand.static_type not in (NUMBER, ANY):
                self.fail(f"unary '-' needs a number, not a {operand.static_type}", token.pos)
            if isinstance(operand, Constant) and type(operand.value) is float:
                return Constant(-operand.value, NUMBER, token.pos)
            return Negate(operand, token.pos)
        return self.parse_primary()

    # -- operands ----------------------------------------------------------------------------

    def parse_primary(self) -> Expr:
        """Parse a literal, property, body field, function call or parenthesised condition."""
        token = self.tokens.advance()
        kind = token.kind
        if kind == "number":
            return Constant(token.value, NUMBER, token.pos)
        if kind == "string":
            return Constant(token.value, STRING, token.pos)
        if kind == "literal":
            value, literal_type = LITERALS[token.text]
            return Constant(value, literal_type, token.pos)
        if kind == "ident":
            if self.tokens.at_op("("):
                return self.parse_call(token)
            return AppProperty(token.text, token.pos)
        if kind == "sysprop":
            return self.system_reference(token, escaped=False)
        if kind == "op" and token.text == "{":
            return self.parse_escaped_system_property()
        if kind == "op" and token.text == "(":
            return self.parse_parenthesised(token)
        self.fail_expected_value(token)

    def parse_escaped_system_property(self) -> Expr:
        """Parse the rest of `{$name}` after the opening brace."""
        inner = self.tokens.advance()
        if inner.kind != "sysprop":
            self.fail("expected a $property inside '{ }'", inner.pos)
        if not self.tokens.at_op("}"):
            self.fail("expected '}' after the escaped system property", self.tokens.peek().pos)
        self.tokens.advance()
        return self.system_reference(inner, escaped=True)

    def parse_parenthesised(self, opening: Token) -> Expr:
        """Parse the rest of `( condition )` after the opening parenthesis."""
        inner = self.parse_or()
        if not self.tokens.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        self.tokens.advance()
        return inner

    def fail_expected_value(self, token: Token) -> NoReturn:
        """Reject a token where a value should be, saying what was found instead."""
        if token.kind == "eof":
            self.fail("expected a value but the route ended", token.pos)
        if token.kind == "keyword" and token.value == "into":
            self.fail("expected a value before INTO", token.pos)
        if token.kind == "op" and token.text == ")":
            self.fail("unbalanced parentheses: ')' without a matching '('", token.pos)
        self.fail(f"expected a value, found '{token.text}'", token.pos)

    def parse_call(self, name_token: Token) -> Expr:
        """Parse a built-in call and check its arguments' types."""
        lowered = name_token.text.lower()
        builtin = BUILTINS.get(lowered)
        if builtin is None:
            self.fail(f"unknown function '{name_token.text}'", name_token.pos)
        args = self.parse_arguments()
        label = lowered.upper()
        runtime = self.resolve_overloads(builtin, label, args, name_token.pos)
        return Call(label, args, name_token.pos, builtin, runtime)

    def parse_arguments(self) -> tuple[Expr, ...]:
        """Parse `( a, b, ... )` after a function name."""
        opening = self.tokens.advance()  # the '('
        args: list[Expr] = []
        if not self.tokens.at_op(")"):
            args.append(self.parse_or())
            while self.tokens.at_op(","):
                self.tokens.advance()
                args.append(self.parse_or())
        if not self.tokens.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        self.tokens.advance()
        return tuple(args)

    def resolve_overloads(
        self, builtin: Builtin, label: str, args: tuple[Expr, ...], pos: int
    ) -> tuple[tuple[type, ...], ...]:
        """Return the runtime types of the overloads these arguments can match, or fail naming the call."""
        signatures = builtin.signatures_for(len(args))
        if not signatures:
            counts = sorted({len(params) for params in builtin.overloads})
            wanted = " or ".join(str(count) for count in counts) + (" or more" if builtin.variadic else "")
            self.fail(f"{label} takes {wanted} argument(s), not {len(args)}", pos)
        given = [arg.static_type for arg in args]
        matching = [
            params
            for params in signatures
            if all(param in (WILDCARD, arg) or arg == ANY for param, arg in zip(params, given, strict=True))
        ]
        if not matching:
            hint = _PROPERTY_HINT if NUMBER in signatures[0] and STRING in given else ""
            self.fail(f"{label}({', '.join(given)}) is not defined{hint}", pos)
        return tuple(tuple(RUNTIME_TYPES.get(param, object) for param in params) for params in matching)

    def system_reference(self, token: Token, *, escaped: bool) -> Expr:
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

    def body_path(self, rest: str, token: Token) -> tuple[str | int, ...]:
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

    # -- type checks -------------------------------------------------------------------------

    def arithmetic(self, token: Token, left: Expr, right: Expr) -> Expr:
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

    def at_op_in(self, ops: frozenset[str] | tuple[str, ...]) -> bool:
        """Return whether the current token is one of these operators."""
        token = self.tokens.peek()
        return token.kind == "op" and token.text in ops
