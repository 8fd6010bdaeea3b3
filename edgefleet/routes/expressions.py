"""The nodes of a parsed WHERE condition and how each evaluates on a message (three-valued logic)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from edgefleet.routes.functions import Builtin
from edgefleet.routes.message import MessageContext, is_json_date
from edgefleet.routes.values import ANY, BOOL, MISSING, NULL, NUMBER, STRING, UNDEF, UNDEFINED, Missing, Value

__all__ = [
    "AppProperty",
    "Arithmetic",
    "BodyField",
    "Call",
    "Coalesce",
    "Comparison",
    "Constant",
    "Expr",
    "Logical",
    "Negate",
    "Not",
    "SystemProperty",
]


class Expr(ABC):
    """A node of a parsed WHERE condition."""

    __slots__ = ()

    @property
    @abstractmethod
    def static_type(self) -> str:
        """Return the type known when parsing: string, number, bool, null, undefined or any."""

    @abstractmethod
    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
        """Return the field's value: MISSING where the path selects nothing, UNDEFINED for objects and arrays."""
        if not self.escaped and context.has_dollar_properties and "[" not in self.text:
            # edgeHub: an application property literally named `$body.x` wins over the body query
            # (not for paths with an index, which it never looks up as properties).
            shadowing = context.properties.get(self.text.lower())
            if shadowing is not None:
                return shadowing
        body = context.body()
        if body is UNDEFINED:  # not a JSON object with a declared JSON content type and encoding
            return UNDEFINED
        current = self._walk(body)
        # edgeHub's BodyQuery turns objects and arrays into undefined; Newtonsoft has read ISO-8601
        # date strings as dates, which edgeHub's QueryValue treats as objects too.
        if isinstance(current, dict | list) or (type(current) is str and is_json_date(current)):
            return UNDEFINED
        # What is left is a JSON primitive (string, float, bool, null) or MISSING.
        return cast(Value, current)

    def _walk(self, body: object) -> object:
        """Follow the path's keys and indexes into the parsed body; MISSING where it selects nothing."""
        # Newtonsoft's SelectTokens yields nothing for a missing key, an index out of range or a step
        # into a value of the wrong kind, and edgeHub's JsonMessageQueryValueProvider maps that to null.
        current = body
        for step in self.path:
            if isinstance(step, str):
                if type(current) is not dict or step not in current:
                    return MISSING
                current = current[step]
            else:
                if type(current) is not list or step >= len(current):
                    return MISSING
                current = current[step]
        return current


@dataclass(frozen=True, slots=True)
class Not(Expr):
    """`NOT operand`."""

    operand: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return bool."""
        return BOOL

    def evaluate(self, context: MessageContext) -> Value:
        """Negate a boolean; NOT null is true (edgeHub's Null operator !); anything else is UNDEFINED."""
        value = self.operand.evaluate(context)
        if self.operand.static_type == NULL:
            return True
        if type(value) is bool:
            return not value
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

    def evaluate(self, context: MessageContext) -> Value:
        """Return the negated number, or UNDEFINED for anything else."""
        value = self.operand.evaluate(context)
        return -value if type(value) is float else UNDEFINED


@dataclass(frozen=True, slots=True)
class Logical(Expr):
    """`left AND right` or `left OR right`, three-valued as edgeHub's Bool, Null and QueryValue operators."""

    op: Literal["AND", "OR"]
    left: Expr
    right: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return null where edgeHub types the result Null (AND with a null, OR of two nulls), else bool."""
        types = (self.left.static_type, self.right.static_type)
        if ANY not in types and ((self.op == "AND" and NULL in types) or types == (NULL, NULL)):
            return NULL
        return BOOL

    def evaluate(self, context: MessageContext) -> Value:
        """Combine the operands as edgeHub's operators & and | do."""
        left = self.left.evaluate(context)
        right = self.right.evaluate(context)
        left_type, right_type = self.left.static_type, self.right.static_type
        if ANY in (left_type, right_type):
            # QueryValue & and |: both operands must be booleans, else undefined (no absorption).
            if type(left) is not bool or type(right) is not bool:
                return UNDEFINED
            return (left and right) if self.op == "AND" else (left or right)
        if self.static_type == NULL:
            return None
        if NULL in (left_type, right_type):  # OR with one null gives the other operand
            return right if left_type == NULL else left
        if self.op == "AND":
            if left is False or right is False:
                return False
            return True if left is True and right is True else UNDEFINED
        if left is True or right is True:
            return True
        return False if left is False and right is False else UNDEFINED


_ORDERINGS: Final[dict[str, Callable[[int], bool]]] = {
    "=": lambda order: order == 0,
    "!=": lambda order: order != 0,
    "<>": lambda order: order != 0,
    "<": lambda order: order < 0,
    ">": lambda order: order > 0,
    "<=": lambda order: order <= 0,
    ">=": lambda order: order >= 0,
}
# edgeHub's QueryValueType order (Bool < Double < String < Null): values of different types are
# ordered by it, so `$body.level <> 'debug'` is true when level is a number or null.
_TYPE_RANK: Final[dict[type, int]] = {bool: 1, float: 2, str: 3, type(None): 4, Missing: 4}


def order(left: Value, right: Value) -> int | None:
    """Return -1, 0 or 1 as edgeHub's QueryValue.CompareTo orders two values, None if either is undefined."""
    if left is UNDEFINED or right is UNDEFINED:
        return None
    left_rank, right_rank = _TYPE_RANK[type(left)], _TYPE_RANK[type(right)]
    if left_rank != right_rank:
        return -1 if left_rank < right_rank else 1
    if left_rank == 4:  # null and null
        return 0
    # Strings compare ordinally (code points), numbers numerically, and false < true.
    left_any, right_any = cast(Any, left), cast(Any, right)
    return int(left_any > right_any) - int(left_any < right_any)


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

    def evaluate(self, context: MessageContext) -> Value:
        """Compare as edgeHub's ComparisonOperators: undefined if either side is, else by `order`."""
        # Without a $body operand both sides have the same parse-time type, so `order` only ever
        # ranks different types for $body values, as edgeHub's QueryValue comparison does.
        result = order(self.left.evaluate(context), self.right.evaluate(context))
        return UNDEFINED if result is None else _ORDERINGS[self.op](result)


@dataclass(frozen=True, slots=True)
class Coalesce(Expr):
    """`left ?? right`: the left value when it is defined, else the right one."""

    left: Expr
    right: Expr
    pos: int

    @property
    def static_type(self) -> str:
        """Return any if either side is a $body value, else the left side's type."""
        if ANY in (self.left.static_type, self.right.static_type):
            return ANY
        return self.left.static_type

    def evaluate(self, context: MessageContext) -> Value:
        """Return left unless it is undefined (a missing $body field is null, so it is defined)."""
        if self.left.static_type != UNDEF:
            left = self.left.evaluate(context)
            if left is not UNDEFINED:
                return left
        return self.right.evaluate(context)


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

    def evaluate(self, context: MessageContext) -> Value:
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


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A built-in function call such as `STARTS_WITH($connectionModuleId, 'sensor')`."""

    name: str
    args: tuple[Expr, ...]
    pos: int
    builtin: Builtin = field(repr=False, compare=False)
    # The overloads for this arity as runtime types, resolved once at parse time.
    runtime_signatures: tuple[tuple[type, ...], ...] = field(repr=False, compare=False)

    @property
    def static_type(self) -> str:
        """Return the function's result type."""
        return self.builtin.result

    def evaluate(self, context: MessageContext) -> Value:
        """Call the function; arguments of the wrong runtime type give UNDEFINED."""
        values = [arg.evaluate(context) for arg in self.args]
        if self.builtin.total:
            return self.builtin.impl(*values)
        for signature in self.runtime_signatures:
            if all(type(value) is expected for value, expected in zip(values, signature, strict=True)):
                result = self.builtin.impl(*values)
                return UNDEFINED if result != result else result  # NaN is not a value here
        return UNDEFINED
