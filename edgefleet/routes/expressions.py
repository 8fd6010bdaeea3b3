"""The nodes of a parsed WHERE condition and how each evaluates on a message (three-valued logic)."""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from edgefleet.routes.functions import Builtin
from edgefleet.routes.message import MessageContext
from edgefleet.routes.values import ANY, BOOL, NUMBER, STRING, UNDEFINED, Value

__all__ = [
    "AppProperty",
    "Arithmetic",
    "BodyField",
    "Call",
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
        """Return the field's primitive value; objects, arrays and missing fields are UNDEFINED."""
        if not self.escaped and context.has_dollar_properties:
            # edgeHub: an application property literally named `$body.x` wins over the body query.
            shadowing = context.properties.get(self.text.lower())
            if shadowing is not None:
                return shadowing
        current = self._walk(context.body())
        # Comparisons are defined only between primitive values.
        if current is UNDEFINED or isinstance(current, dict | list):
            return UNDEFINED
        # What is left is a JSON primitive: a string, float (ints are parsed as floats), bool or null.
        return cast(Value, current)

    def _walk(self, body: object) -> object:
        """Follow the path's keys and indexes into the parsed body, or return UNDEFINED where it breaks off."""
        current = body
        for step in self.path:
            if isinstance(step, str):
                if type(current) is not dict:
                    return UNDEFINED
                current = current.get(step, UNDEFINED)
            else:
                if type(current) is not list or step >= len(current):
                    return UNDEFINED
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

    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
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

    def evaluate(self, context: MessageContext) -> Value:
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
