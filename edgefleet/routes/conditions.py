"""Parse a WHERE condition into expression nodes, typing it as edgeHub does when it compiles a route.

Precedence follows edgeHub's Condition.g4 (ANTLR: earlier alternatives bind tighter), loosest first:
`??`, OR, AND, `= != <>`, `< <= > >=`, `+ - ||`, `* / %`, then the prefix operators unary `-` and
NOT, which bind tightest: `NOT a = 'x'` is `(NOT a) = 'x'` (a type error), so write `NOT (a = 'x')`.
The type checks are those of edgeHub's ConditionVisitor (CheckOperand(s), CheckBooleanOperands).
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from edgefleet.routes.expressions import (
    AppProperty,
    Arithmetic,
    BodyField,
    Call,
    Coalesce,
    Comparison,
    Constant,
    Expr,
    Logical,
    Negate,
    Not,
    SystemProperty,
)
from edgefleet.routes.functions import BUILTINS, QUERY_VALUE_BUILTINS, WILDCARD, Builtin
from edgefleet.routes.lexer import LITERALS, Token, TokenCursor
from edgefleet.routes.values import ANY, BOOL, NULL, NUMBER, RUNTIME_TYPES, STRING, UNDEF, UNDEFINED

__all__ = ["parse_condition"]

# edgeHub's JsonPath.g4: `key` or `key[index]` steps separated by '.', a key being anything but
# `()<>@,;:\"/[]?={}.` and white space (so `$body.['key']` is not accepted).
_BODY_STEP_RE: Final = re.compile(r"\.([^()<>@,;:\\\"/\[\]?={}.\s]+)|\[(\d+)\]")
_EQUALITY_OPS: Final = ("=", "!=", "<>")
_ORDERING_OPS: Final = ("<", "<=", ">", ">=")
# The static types a $body value (edgeHub's QueryValue) can be compared or combined with.
_QUERY_VALUE_PARTNERS: Final = frozenset({STRING, NUMBER, BOOL, NULL, ANY})
_BOOLEAN_OPERANDS: Final = frozenset({BOOL, NULL, UNDEF, ANY})
_PROPERTY_HINT = " (message properties are strings: convert with AS_NUMBER(...))"


def parse_condition(tokens: TokenCursor) -> Expr:
    """Parse the condition starting at the cursor, leaving the cursor on the first token after it."""
    return _ConditionParser(tokens).parse_coalesce()


class _ConditionParser:
    """Recursive-descent parser for one condition; each level parses one precedence of operators."""

    def __init__(self, tokens: TokenCursor) -> None:
        self.tokens = tokens

    def fail(self, problem: str, position: int | None) -> NoReturn:
        """Raise a RouteError for this route."""
        self.tokens.fail(problem, position)

    # -- binary operators, loosest first -------------------------------------------------------

    def parse_coalesce(self) -> Expr:
        """Parse `a ?? b ...`."""
        left = self.parse_or()
        while self.tokens.at_op("??"):
            token = self.tokens.advance()
            right = self.parse_or()
            self.check_same_types("??", token.pos, left, right)
            left = Coalesce(left, right, token.pos)
        return left

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
        left = self.parse_equality()
        while self.tokens.at_keyword("and"):
            token = self.tokens.advance()
            right = self.parse_equality()
            self.check_boolean_operands("AND", token.pos, left, right)
            if {left.static_type, right.static_type} >= {ANY, NULL}:
                # edgeHub types this AND as Null but cannot convert the $body value's result to it.
                self.fail("edgeHub cannot compile AND between a $body value and null", token.pos)
            left = Logical("AND", left, right, token.pos)
        return left

    def parse_equality(self) -> Expr:
        """Parse `a = b`, `a != b` and `a <> b`."""
        left = self.parse_ordering()
        while self.at_op_in(_EQUALITY_OPS):
            token = self.tokens.advance()
            right = self.parse_ordering()
            self.check_same_types(f"'{token.text}'", token.pos, left, right)
            left = Comparison(token.text, left, right, token.pos)
        return left

    def parse_ordering(self) -> Expr:
        """Parse `a < b`, `a <= b`, `a > b` and `a >= b`."""
        left = self.parse_additive()
        while self.at_op_in(_ORDERING_OPS):
            token = self.tokens.advance()
            right = self.parse_additive()
            self.check_same_types(f"'{token.text}'", token.pos, left, right)
            left = Comparison(token.text, left, right, token.pos)
        return left

    def parse_additive(self) -> Expr:
        """Parse `a + b`, `a - b` and the string concatenation `a || b`."""
        left = self.parse_multiplicative()
        while self.at_op_in(("+", "-", "||")):
            token = self.tokens.advance()
            right = self.parse_multiplicative()
            left = self.concat(token, left, right) if token.text == "||" else self.arithmetic(token, left, right)
        return left

    def parse_multiplicative(self) -> Expr:
        """Parse `a * b`, `a / b` and `a % b`."""
        left = self.parse_prefix()
        while self.at_op_in(("*", "/", "%")):
            token = self.tokens.advance()
            right = self.parse_prefix()
            left = self.arithmetic(token, left, right)
        return left

    def parse_prefix(self) -> Expr:
        """Parse unary minus and NOT, which apply to the operand right after them only."""
        if self.tokens.at_op("-"):
            token = self.tokens.advance()
            operand = self.parse_prefix()
            if operand.static_type == ANY:
                # QueryValue has no unary minus: edgeHub fails building the expression.
                self.fail("edgeHub cannot negate a $body value (write 0 - $body.x)", token.pos)
            if operand.static_type != NUMBER:
                self.fail(f"unary '-' needs a number, not a {operand.static_type}", token.pos)
            if isinstance(operand, Constant) and type(operand.value) is float:
                return Constant(-operand.value, NUMBER, token.pos)
            return Negate(operand, token.pos)
        if self.tokens.at_keyword("not"):
            token = self.tokens.advance()
            operand = self.parse_prefix()
            if operand.static_type not in (BOOL, NULL, ANY):
                hint = " (NOT binds tighter than comparisons: write NOT (a = b))"
                self.fail(f"NOT needs a boolean operand, not a {operand.static_type}{hint}", token.pos)
            return Not(operand, token.pos)
        return self.parse_primary()

    # -- operands ----------------------------------------------------------------------------

    def parse_primary(self) -> Expr:
        """Parse a literal, property, body field, function call or parenthesised condition."""
        token = self.tokens.advance()
        kind = token.kind
        if kind == "number":
            # A number .NET cannot parse (`e5`) is edgeHub's Undefined constant.
            return Constant(token.value, UNDEF if token.value is UNDEFINED else NUMBER, token.pos)
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
        raise AssertionError("unreachable")

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
        inner = self.parse_coalesce()
        if not self.tokens.at_op(")"):
            self.fail("unbalanced parentheses: '(' is never closed", opening.pos)
        self.tokens.advance()
        return inner

    def fail_expected_value(self, token: Token) -> NoReturn:
        """Reject a token where a value should be, saying what was found instead."""
        if token.kind == "keyword" and token.value == "into":
            self.fail("expected a value before INTO", token.pos)
        if token.kind == "op" and token.text == ")":
            self.fail("unbalanced parentheses: ')' without a matching '('", token.pos)
        self.tokens.fail_at(token, "a value")

    def parse_call(self, name_token: Token) -> Expr:
        """Parse a built-in call and check its arguments' types."""
        lowered = name_token.text.lower()
        builtin = BUILTINS.get(lowered)
        if builtin is None:
            self.fail(f"unknown function '{name_token.text}'", name_token.pos)
        args = self.parse_arguments()
        if len(args) == 1 and args[0].static_type == ANY:
            builtin = QUERY_VALUE_BUILTINS.get(lowered, builtin)
        label = lowered.upper()
        runtime = self.resolve_overloads(builtin, label, args, name_token.pos)
        return Call(label, args, name_token.pos, builtin, runtime)

    def parse_arguments(self) -> tuple[Expr, ...]:
        """Parse `( a, b, ... )` after a function name."""
        opening = self.tokens.advance()  # the '('
        args: list[Expr] = []
        if not self.tokens.at_op(")"):
            args.append(self.parse_coalesce())
            while self.tokens.at_op(","):
                self.tokens.advance()
                args.append(self.parse_coalesce())
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
        """Turn a `$name` token into a system property or a body field, as edgeHub's VisitSysProperty."""
        text = token.text
        if text.lower().startswith("$body."):
            return BodyField(self.body_path(text[len("$body") :], token), text, token.pos, escaped)
        if "[" in text or "]" in text:
            # Not a body query, and property names cannot hold brackets: edgeHub's constant undefined.
            return Constant(UNDEFINED, UNDEF, token.pos)
        # Any other name (`$body` alone, `$twin.x`, `$unknown`) is a system property, undefined if absent.
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
        """Build an arithmetic node after checking both operands are numbers (or $body values)."""
        for operand in (left, right):
            if operand.static_type not in (NUMBER, ANY):
                hint = _PROPERTY_HINT if operand.static_type == STRING else ""
                self.fail(f"'{token.text}' needs numbers, not a {operand.static_type}{hint}", token.pos)
        if token.text == "%" and ANY in (left.static_type, right.static_type):
            # QueryValue defines + - * / but not %: edgeHub fails building the expression.
            self.fail("edgeHub cannot apply '%' to a $body value", token.pos)
        return Arithmetic(token.text, left, right, token.pos)

    def concat(self, token: Token, left: Expr, right: Expr) -> Expr:
        """Build `a || b` as edgeHub does: CONCAT of two strings (or $body values)."""
        for operand in (left, right):
            if operand.static_type not in (STRING, ANY):
                self.fail(f"'||' joins strings, not a {operand.static_type} (use OR for logic)", token.pos)
        builtin = BUILTINS["concat"]
        return Call("CONCAT", (left, right), token.pos, builtin, ((str, str),))

    def check_same_types(self, op: str, pos: int, left: Expr, right: Expr) -> None:
        """Reject operands edgeHub's CheckOperands refuses: different types, unless one is a $body value."""
        left_type, right_type = left.static_type, right.static_type
        if left_type == right_type:
            return
        if ANY in (left_type, right_type) and {left_type, right_type} <= _QUERY_VALUE_PARTNERS:
            return
        hint = _PROPERTY_HINT if {left_type, right_type} == {STRING, NUMBER} else ""
        self.fail(f"cannot compare a {left_type} with a {right_type} using {op}{hint}", pos)

    def check_boolean_operands(self, op: str, pos: int, left: Expr, right: Expr) -> None:
        """Reject AND/OR operands that edgeHub's CheckBooleanOperands refuses."""
        if left.static_type not in _BOOLEAN_OPERANDS:
            self.fail(f"{op} needs boolean operands, not a {left.static_type}", pos)
        # edgeHub checks the right operand against the left's type being a QueryValue (sic).
        if right.static_type not in _BOOLEAN_OPERANDS and left.static_type != ANY:
            self.fail(f"{op} needs boolean operands, not a {right.static_type}", pos)

    def at_op_in(self, ops: frozenset[str] | tuple[str, ...]) -> bool:
        """Return whether the current token is one of these operators."""
        token = self.tokens.peek()
        return token.kind == "op" and token.text in ops
