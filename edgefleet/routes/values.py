"""Values of the routing query language: `undefined`, the missing-field null and the value types."""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANY",
    "BOOL",
    "MISSING",
    "NULL",
    "NUMBER",
    "RUNTIME_TYPES",
    "STRING",
    "UNDEF",
    "UNDEFINED",
    "Missing",
    "Undefined",
    "Value",
]


class Undefined:
    """The query language's `undefined`: a missing property, or an operation on the wrong types."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


class Missing:
    """The null edgeHub gives a `$body` path that selects nothing (its shared `QueryValue.Null`).

    It compares as null, and IS_DEFINED is true for it, but unlike a JSON `null` value IS_NULL is
    false for it (edgeHub's IsNull compares against that shared instance by reference).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "null(missing)"


UNDEFINED: Final = Undefined()
MISSING: Final = Missing()
# Numbers are floats (the query language has one number type, like JSON); bool is checked with
# `type(v) is bool` everywhere because Python's bool is an int subclass.
Value = str | float | bool | None | Undefined | Missing

# The types a condition's nodes have when the route is parsed (edgeHub's static types: string,
# double, Bool, Null, Undefined); ANY is edgeHub's QueryValue, a `$body` value typed at run time.
STRING, NUMBER, BOOL, NULL, UNDEF, ANY = "string", "number", "bool", "null", "undefined", "any"
# The Python type a value of a parse-time type has at run time, for checking call arguments.
RUNTIME_TYPES: Final[dict[str, type]] = {STRING: str, NUMBER: float}
