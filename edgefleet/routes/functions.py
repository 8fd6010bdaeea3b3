"""The built-in functions of the routing query language: the set edgeHub implements, case-insensitive."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from edgefleet.routes.values import BOOL, MISSING, NUMBER, STRING, UNDEFINED, Value

__all__ = ["BUILTINS", "QUERY_VALUE_BUILTINS", "WILDCARD", "Builtin"]

WILDCARD = "*"  # a parameter of the is_* functions: accepts any type, including undefined


@dataclass(frozen=True, slots=True)
class Builtin:
    """One built-in function: its overloads (parameter types), result type and implementation."""

    name: str
    overloads: tuple[tuple[str, ...], ...]
    result: str
    impl: Callable[..., Value]
    variadic: bool = False  # the last parameter repeats (CONCAT)
    total: bool = False  # called with any values (the is_* functions); others get UNDEFINED on bad input

    def signatures_for(self, arity: int) -> tuple[tuple[str, ...], ...]:
        """Return the overloads that take `arity` arguments, with variadic ones expanded."""
        found = []
        for params in self.overloads:
            if len(params) == arity:
                found.append(params)
            elif self.variadic and arity > len(params):
                found.append(params + (params[-1],) * (arity - len(params)))
        return tuple(found)


# .NET's double.TryParse(text, NumberStyles.Any, InvariantCulture), which edgeHub's AS_NUMBER uses:
# surrounding white space, a leading or trailing sign or parentheses, ',' group separators, a
# decimal point and an exponent ("1,000" is 1000, "(5)" is -5, "5-" is -5).
_NUMBER_ANY: Final = re.compile(
    r"\s*(?P<open>\()?\s*(?P<lead>[+-])?\s*(?P<int>[0-9][0-9,]*)?(?:\.(?P<frac>[0-9]*))?"
    r"(?:[eE](?P<exp>[+-]?[0-9]+))?\s*(?P<trail>[+-])?\s*(?P<close>\))?\s*"
)
_SPECIAL_NUMBERS: Final = {"infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def _parse_number(text: str) -> Value:
    """Parse text as .NET's NumberStyles.Any does, or return UNDEFINED."""
    special = _SPECIAL_NUMBERS.get(text.strip().lower())
    if special is not None:
        return special
    match = _NUMBER_ANY.fullmatch(text)
    if match is None or not (match["int"] or match["frac"]):
        return UNDEFINED
    parenthesised = match["open"] is not None
    if parenthesised != (match["close"] is not None) or (match["lead"] and match["trail"]):
        return UNDEFINED
    if parenthesised and (match["lead"] or match["trail"]):
        return UNDEFINED
    digits = f"{(match['int'] or '0').replace(',', '')}.{match['frac'] or '0'}e{match['exp'] or '0'}"
    number = float(digits)
    negative = parenthesised or "-" in (match["lead"], match["trail"])
    return -number if negative else number


def _as_number(value: Value) -> Value:
    """Convert text to a number as edgeHub does; numbers pass through, anything else is UNDEFINED."""
    if type(value) is float:
        return value
    if type(value) is str:
        return _parse_number(value)
    return UNDEFINED


def _is_null_query_value(value: Value) -> Value:
    """Return IS_NULL of a $body value as edgeHub computes it: false only for a path that selects nothing."""
    # edgeHub's IsNull.RuntimeQueryValue returns `input != QueryValue.Null`, a reference comparison
    # with the shared null a missing path yields: so it is true for every defined value found in the
    # body (a JSON null, but also a string or a number) and false for a missing field.
    if value is UNDEFINED:
        return UNDEFINED
    return value is not MISSING


def _exp(x: float) -> Value:
    """Return e**x, infinity on overflow."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _power(x: float, y: float) -> Value:
    """Return x**y, infinity on overflow and UNDEFINED where it is not a real number."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return UNDEFINED


def _ceiling(x: float) -> Value:
    """Return the smallest integer not below x."""
    return float(math.ceil(x)) if math.isfinite(x) else x


def _floor(x: float) -> Value:
    """Return the largest integer not above x."""
    return float(math.floor(x)) if math.isfinite(x) else x


def _sign(x: float) -> Value:
    """Return -1, 0 or 1."""
    return 0.0 if x == 0 else math.copysign(1.0, x)


def _sqrt(x: float) -> Value:
    """Return the square root, UNDEFINED for negative numbers."""
    return math.sqrt(x) if x >= 0 else UNDEFINED


def _substring(text: str, start: float, length: float | None = None) -> Value:
    """Return `length` characters from zero-based `start` (or the rest of the string)."""
    # SUBSTRING(string, start [, length]): zero-based start; out-of-range arguments are undefined.
    if not start.is_integer() or not 0 <= start <= len(text):
        return UNDEFINED
    begin = int(start)
    if length is None:
        return text[begin:]
    if not length.is_integer() or length < 0:
        return UNDEFINED
    return text[begin : begin + int(length)]


_S, _N = STRING, NUMBER
# Keyed by the lower-cased name a route calls the function by.
BUILTINS: Final[dict[str, Builtin]] = {
    builtin.name: builtin
    for builtin in (
        Builtin("abs", ((_N,),), _N, abs),
        Builtin("exp", ((_N,),), _N, _exp),
        Builtin("power", ((_N, _N),), _N, _power),
        Builtin("square", ((_N,),), _N, lambda x: x * x),
        Builtin("ceiling", ((_N,),), _N, _ceiling),
        Builtin("floor", ((_N,),), _N, _floor),
        Builtin("sign", ((_N,),), _N, _sign),
        Builtin("sqrt", ((_N,),), _N, _sqrt),
        Builtin("as_number", ((_S,), (_N,)), _N, _as_number),
        Builtin("is_bool", ((WILDCARD,),), BOOL, lambda v: type(v) is bool, total=True),
        Builtin("is_defined", ((WILDCARD,),), BOOL, lambda v: v is not UNDEFINED, total=True),
        Builtin("is_null", ((WILDCARD,),), BOOL, lambda v: v is None, total=True),
        Builtin("is_number", ((WILDCARD,),), BOOL, lambda v: type(v) is float, total=True),
        Builtin("is_string", ((WILDCARD,),), BOOL, lambda v: type(v) is str, total=True),
        Builtin("concat", ((_S, _S),), _S, lambda *parts: "".join(parts), variadic=True),
        Builtin("length", ((_S,),), _N, lambda s: float(len(s))),
        Builtin("lower", ((_S,),), _S, str.lower),
        Builtin("upper", ((_S,),), _S, str.upper),
        Builtin("substring", ((_S, _N), (_S, _N, _N)), _S, _substring),
        Builtin("index_of", ((_S, _S),), _N, lambda s, fragment: float(s.find(fragment))),
        Builtin("starts_with", ((_S, _S),), BOOL, str.startswith),
        Builtin("ends_with", ((_S, _S),), BOOL, str.endswith),
        Builtin("contains", ((_S, _S),), BOOL, lambda s, fragment: fragment in s),
    )
}
# The functions whose result for a $body argument differs from the static-typed one, by name.
QUERY_VALUE_BUILTINS: Final[dict[str, Builtin]] = {
    "is_null": Builtin("is_null", ((WILDCARD,),), BOOL, _is_null_query_value, total=True),
}
