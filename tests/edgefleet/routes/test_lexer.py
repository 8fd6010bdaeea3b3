import pytest

from edgefleet.routes import parse_route
from tests.edgefleet.routes.conftest import A_ONLY, assert_parse_error, message, where

pytestmark = pytest.mark.fast


def test_string_literals_take_either_quote_and_escapes():
    msg = message(properties={"quote": 'it\'s "ok"', "snow": "\u2603"})
    assert where("quote = 'it\\'s \"ok\"'", msg)
    assert where('quote = "it\'s \\"ok\\""', msg)
    assert where("snow = '\\u2603'", msg)


def test_keywords_and_function_names_are_case_insensitive():
    route = parse_route("r", "from /messages/* where a = '1' And Not (b = '1') oR false into $UPSTREAM")
    assert route.matches(A_ONLY)
    assert where("is_defined(a) AND Starts_With(a, '1')", A_ONLY)


@pytest.mark.parametrize(
    ("text", "problem", "at"),
    [
        ("FROM /messages/* WHERE kind = 'a INTO $upstream", "unterminated string", "'a"),
        ("FROM /messages/* WHERE kind = 'a\\q' INTO $upstream", "unterminated string", "'a\\q"),
        ("FROM /messages/* WHERE kind == 'a' INTO $upstream", "'==' is not an operator", "= 'a'"),
        ("FROM /messages/* WHERE kind = 'a' && x = 'b' INTO $upstream", "'&&' is not an operator", "&&"),
        ("FROM /messages/* WHERE kind # 'a' INTO $upstream", "expected INTO, found '#'", "#"),
        ("FROM /messages/* WHERE kind = [1] INTO $upstream", "unexpected character '['", "["),
        ("FROM /messages/* WHERE 12ab = 1 INTO $upstream", "cannot compare a string with a number", "= 1"),
    ],
)
def test_lexical_errors_name_the_route_the_problem_and_the_position(text, problem, at):
    assert_parse_error(text, problem, at)
