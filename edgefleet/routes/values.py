"""Values of the routing query language: `undefined`, the value union and the type names."""

from __future__ import annotations

from typing import Final

__all__ = ["ANY", "BOOL", "NULL", "NUMBER", "RUNTIME_TYPES", "STRING", "UNDEF", "UNDEFINED", "Undefined", "Value"]


class Undefined:
    """The query language's `undefined`: a missing property, or an operation on the wrong types."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Final = Undefined()
# Numbers are floats (the query language has one number type, like JSON); bool is checked with
# `type(v) is bool` everywhere because Python's bool is an int subclass.
Value = str | float | bool | None | Undefined

# The types a condition's nodes have when the route is parsed; ANY is only known at run time.
STRING, NUMBER, BOOL, NULL, UNDEF, ANY = "string", "number", "bool", "null", "undefined", "any"
# The Python type a value of a parse-time type has at run time, for checking call arguments.
RUNTIME_TYPES: Final[dict[str, type]] = {STRING: str, NUMBER: float}
