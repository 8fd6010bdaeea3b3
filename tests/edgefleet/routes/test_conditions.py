import pytest

from edgefleet.routes import RouteError, parse_route
from tests.edgefleet.routes.conftest import assert_parse_error

pytestmark = pytest.mark.fast


def test_comparing_a_string_property_with_a_number_is_rejected_and_suggests_as_number():
    with pytest.raises(RouteError, match=r"cannot compare a string with a number.*AS_NUMBER") as caught:
        parse_route("r", "FROM /* WHERE severity > 2 INTO $upstream")
    assert caught.value.position == len("FROM /* WHERE severity ")


@pytest.mark.parametrize(
    ("text", "problem", "at"),
    [
        ("FROM /messages/* WHERE (kind = 'a' INTO $upstream", "'(' is never closed", "("),
        ("FROM /messages/* WHERE IS_ARRAY(kind) INTO $upstream", "unknown function 'IS_ARRAY'", "IS_ARRAY"),
        ("FROM /messages/* WHERE kind = 'a' AND INTO $upstream", "expected a value before INTO", "INTO"),
        ("FROM /messages/* WHERE LENGTH(kind, kind) = 1 INTO $upstream", "LENGTH takes 1 argument", "LENGTH"),
        ("FROM /messages/* WHERE LOWER(3) = 'a' INTO $upstream", "LOWER(number) is not defined", "LOWER"),
        ("FROM /messages/* WHERE kind + 1 = 2 INTO $upstream", "'+' needs numbers, not a string", "+"),
        ("FROM /messages/* WHERE kind AND true INTO $upstream", "AND needs boolean operands", "AND"),
        ("FROM /messages/* WHERE $body.a..b = 1 INTO $upstream", "bad $body path", "..b"),
        ("FROM /messages/* WHERE $body.['a b'] = 1 INTO $upstream", "bad $body path", ".['a"),
        ("FROM /messages/* WHERE NOT kind = 'a' INTO $upstream", "NOT binds tighter than comparisons", "NOT"),
    ],
)
def test_condition_errors_name_the_route_the_problem_and_the_position(text, problem, at):
    assert_parse_error(text, problem, at)
