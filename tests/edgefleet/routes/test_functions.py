import pytest

from tests.edgefleet.routes.conftest import json_message, message, where

pytestmark = pytest.mark.fast


def test_as_number_compares_a_property_numerically():
    assert where("AS_NUMBER(severity) > 2", message(properties={"severity": "10"}))
    assert not where("AS_NUMBER(severity) > 2", message(properties={"severity": "1.5"}))
    assert not where("AS_NUMBER(severity) > 2", message(properties={"severity": "high"}))
    assert where("AS_NUMBER(severity) = 1000", message(properties={"severity": "1e3"}))


@pytest.mark.parametrize(
    "condition",
    [
        "IS_STRING(kind) AND NOT IS_NUMBER(kind)",
        "IS_NUMBER($body.temp) AND IS_BOOL($body.ok)",
        "STARTS_WITH($connectionModuleId, 'sen')",
        "ENDS_WITH(kind, 'ing')",
        "CONTAINS(kind, 'adi')",
        "LOWER(mixed) = 'abc'",
        "UPPER(mixed) = 'ABC'",
        "LENGTH(kind) = 7",
        "SUBSTRING(kind, 2) = 'ading'",
        "SUBSTRING(kind, 0, 4) = 'read'",
        "INDEX_OF(kind, 'ad') = 2",
        "CONCAT(kind, '-', mixed) = 'reading-aBc'",
        "ABS(-3) = 3 AND SQUARE(3) = 9 AND POWER(2, 10) = 1024",
        "FLOOR(2.7) = 2 AND CEILING(2.1) = 3 AND SIGN(-4) = -1 AND SQRT(16) = 4",
        "AS_NUMBER('42') = 42 AND AS_NUMBER(42) = 42",
        "NOT IS_DEFINED(SQRT(-1))",
        "NOT IS_DEFINED(SUBSTRING(kind, 99))",
    ],
)
def test_functions_evaluate_as_documented(condition):
    msg = json_message({"temp": 31, "ok": False}, properties={"kind": "reading", "mixed": "aBc"})
    assert where(condition, msg)
