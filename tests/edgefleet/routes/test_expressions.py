import pytest

from edgefleet.routes import RouteError
from tests.edgefleet.routes.conftest import A_ONLY, json_message, message, where

pytestmark = pytest.mark.fast

# -- properties ----------------------------------------------------------------------------------


def test_where_on_application_property_filters_by_value():
    assert where("kind = 'reading'", message(properties={"kind": "reading"}))
    assert not where("kind = 'reading'", message(properties={"kind": "alert"}))
    assert where("kind != 'alert'", message(properties={"kind": "reading"}))
    assert where("kind <> 'alert'", message(properties={"kind": "reading"}))


def test_dollar_name_prefers_an_application_property_unless_escaped_in_braces():
    msg = message(properties={"$messageId": "app"}, system={"messageId": "sys"})
    assert where("$messageId = 'app'", msg)
    assert where("{$messageId} = 'sys'", msg)
    assert where("{ $messageId } = 'sys'", msg)


# -- $body fields --------------------------------------------------------------------------------


def test_where_on_body_field_filters_by_value():
    condition = "$body.features.temp > 30"
    assert where(condition, json_message({"features": {"temp": 31.5}}))
    assert not where(condition, json_message({"features": {"temp": 12}}))
    assert where("$body.device_id = 'd-7'", json_message({"device_id": "d-7"}))


def test_body_fields_support_array_indexes_booleans_and_null():
    msg = json_message({"readings": [{"temp": 20}, {"temp": 40}], "ok": True, "label": None})
    assert where("$body.readings[1].temp = 40", msg)
    assert not where("$body.readings[2].temp = 40", msg)
    assert where("$body.ok", msg)
    assert where("$body.ok = true", msg)
    # edgeHub gives a path that selects nothing null, which is defined (JsonMessageQueryValueProvider).
    assert where("IS_NULL($body.label) AND IS_DEFINED($body.missing) AND $body.missing = null", msg)


def test_body_objects_and_arrays_are_not_values():
    msg = json_message({"features": {"temp": 1}, "tags": [1]})
    assert not where("IS_DEFINED($body.features)", msg)
    assert not where("IS_DEFINED($body.tags)", msg)


# -- logic ---------------------------------------------------------------------------------------


def test_and_binds_tighter_than_or():
    assert where("a = '1' OR b = '1' AND c = '1'", A_ONLY)
    assert not where("(a = '1' OR b = '1') AND c = '1'", A_ONLY)


def test_not_binds_tighter_than_everything_so_a_comparison_needs_parentheses():
    assert where("NOT (b = '1') AND a = '1'", A_ONLY)
    assert not where("NOT (b = '0' AND a = '1')", A_ONLY)
    assert where("NOT NOT (a = '1')", A_ONLY)
    # (NOT $body.status) = 'ok' compares a bool with a string, which edgeHub refuses to compile.
    with pytest.raises(RouteError, match="cannot compare a bool with a string"):
        where("NOT $body.status = 'ok'", json_message({"status": "failed"}))


def test_comparisons_with_a_missing_property_are_false_both_ways():
    msg = message(properties={})
    assert not where("missing = 'x'", msg)
    assert not where("missing != 'x'", msg)
    assert not where("NOT (missing = 'x')", msg)
    assert not where("AS_NUMBER(missing) > 0", msg)
    assert not where("missing = also_missing", msg)
    assert not where("$body.a = $body.b", msg)


def test_undefined_is_absorbed_by_a_decisive_operand():
    msg = message(properties={})
    assert where("missing = 'x' OR true", msg)
    assert not where("missing = 'x' AND true", msg)
    assert where("NOT (missing = 'x' AND false)", msg)  # undefined AND false is false
    assert not where("NOT (missing = 'x' OR false)", msg)  # undefined OR false stays undefined


def test_a_condition_that_is_not_boolean_does_not_route():
    assert not where("'text'", message())
    assert not where("3", message())
    assert not where("null", message())


# -- numbers and strings -------------------------------------------------------------------------


def test_strings_compare_ordinally_so_numeric_text_is_not_numeric():
    assert where("severity > '10'", message(properties={"severity": "9"}))
    assert where("'a' < 'b' AND 'B' < 'a'", message())


def test_a_body_value_of_another_type_is_unequal_and_ordered_by_type():
    msg = json_message({"temp": "31", "flag": "true"})
    assert not where("$body.temp = 31", msg)
    assert where("$body.temp != 31", msg)  # edgeHub's QueryValue: a string is never equal to a number
    assert where("$body.temp > 31", msg)  # ...and ranks above every number
    assert where("$body.temp = '31'", msg)
    assert not where("$body.flag = true", msg)


@pytest.mark.parametrize(
    "condition",
    [
        "1 + 2 * 3 = 7",
        "(1 + 2) * 3 = 9",
        "7 % 4 = 3",
        "-7 % 4 = -3",
        "10 / 4 = 2.5",
        "-(2 - 5) = 3",
        "0x1F = 31",
        "1.5e2 = 150",
        "$body.temp * 2 > 60",
        "NOT IS_DEFINED(1 % 0)",
    ],
)
def test_arithmetic_follows_the_usual_precedence(condition):
    assert where(condition, json_message({"temp": 31}))
