"""Conformance table: what edgeHub does with a route and a message, row by row, from public sources.

Each row gives the route (or its WHERE condition), the message, and what edgeHub does: refuse the
route (ERROR), or route the message (True: it goes to the sink; False: it does not). Each row
names its source. Where Microsoft's documentation and edgeHub's source disagree, the row follows
edgeHub's source and says so.

Sources (Azure/iotedge, edge-hub/core/src/; the routing core is Microsoft.Azure.Devices.Routing.Core):
- LEX: grammar/GrammarLexer.g4, the lexer of routes and conditions (ANTLR: longest match wins, the
  earlier rule on a tie). ID is any run of characters but `()<>@,;:\\"/[]?={}` and white space;
  SYS_PROP is `$` then anything but `()<>@,;:\\"/?={}` and white space; `||` is OP_CONCAT, `??`
  is OP_COALESCE; INTEGER_LITERAL is `-?[0-9]+`; true/false/null/undefined are lower-case.
- COND: grammar/Condition.g4, alternatives in precedence order: prefix `-` and NOT, then `* / %`,
  `+ - ||`, `< <= > >=`, `= != <>`, AND, OR, `??`.
- ROUTE: grammar/Route.g4 (`[SELECT *] FROM path [WHERE condition] INTO sink`, no EOF: text after the
  sink is ignored) and RouteFactory.cs.
- VISIT: query/ConditionVisitor.cs (operand type checks, `||` as concat, `??`, `$body.` lookup with
  app-property precedence and `{$x}` escaping, the built-in function table).
- QV: query/types/QueryValue.cs (a $body value; CompareTo orders different types by QueryValueType:
  Bool < Double < String < Null), query/ComparisonOperators.cs (undefined if either side is), Bool.cs,
  Null.cs, Undefined.cs (three-valued operators).
- BODY: JsonMessageQueryValueProvider.cs (JObject.Parse, SelectTokens; no token selected gives
  QueryValue.Null), query/builtins/BodyQuery.cs (objects become undefined), query/jsonpath/JsonPath.g4
  (`key` or `key[n]` steps), Message.cs (content type and encoding required; property names ignore case).
- FN: query/builtins/*.cs (IsNull compares with QueryValue.Null by reference; AsNumber uses
  double.TryParse with NumberStyles.Any).
- SRC: messageSources/CustomMessageSource.cs and BaseMessageSource.cs (trim `*` then `/`, match by
  prefix ignoring case), Edge.Hub.Core/routing/RoutingMessageConverter.cs (a message's source path).
- SINK: Edge.Hub.Core/routing/EndpointFactory.cs ($upstream and BrokeredEndpoint names ignore case;
  the address is trimmed of one leading and one trailing '/' and split into four parts).
- NEWTONSOFT: Newtonsoft.Json DateTimeUtils.TryParseDateTime (JObject.Parse reads a 19-40 character
  ISO-8601 string with 'T' at index 10 as a date, which QueryValue treats as an object).
- DOC-ROUTES: Microsoft Learn, "Learn how to deploy modules and establish routes in IoT Edge".
- DOC-QUERY: Microsoft Learn, "IoT Hub message routing query syntax".
- ISSUE-4353, ISSUE-5309: Azure/iotedge issues (a condition after the sink is ignored; a `<` in a
  source path makes edgeHub refuse the route).
"""

from __future__ import annotations

import pytest

from edgefleet.routes import Message, RouteError, parse_route, route_message
from tests.edgefleet.routes.conftest import json_message, message

pytestmark = pytest.mark.fast

ERROR = "ERROR"
UP = "$upstream"


def _twin_change() -> Message:
    return message(module="sensor", output=None, kind="twin_change_notification")


SENSOR = message(module="sensor", output="telemetry")
SENSOR_NO_OUTPUT = message(module="sensor", output=None)
OTHER_MODULE = message(module="inference", output="telemetry")
LEAF_DEVICE = Message("leaf1")
TURBOFAN = message(module="turbofanRouter", output="classOutput")
PROPS = message(properties={"a": "1", "b": "0", "c": "0", "kind": "alert", "Severity": "3", "a-1": "v"})
TEXT_BODY = message(system={"contentType": "text/plain", "contentEncoding": "utf-8"}, body=b'{"x": 1}')
NO_ENCODING = message(system={"contentType": "application/json"}, body=b'{"x": 1}')
BODY = json_message(
    {
        "level": "warn",
        "temp": 5,
        "text": "40",
        "flag": True,
        "off": False,
        "label": None,
        "name": "Abc",
        "obj": {"k": 1},
        "readings": [10, 40],
        "ts": "2024-01-01T00:00:00Z",
        "day": "2024-01-01",
        "température": 21,
        "sensor-id": "s-1",
        "x": 1,
    },
    properties={"$body.x": "p", "kind": "alert"},
)
NO_LEVEL = json_message({"other": 1})
NUMERIC_LEVEL = json_message({"level": 3, "error": None})
STRING_ERROR = json_message({"error": "disk full"})
OBJECT_ERROR = json_message({"error": {"code": 1}})


# (route, message, expected sinks as text, or ERROR)
ROUTES = [
    # SRC: "/messages/*" trims to "/messages/", the source of device and module telemetry alike.
    # DOC-ROUTES: /messages/* takes any device-to-cloud message from a module or a downstream device.
    pytest.param("FROM /messages/* INTO $upstream", LEAF_DEVICE, [UP], id="messages-star-takes-device"),
    pytest.param("FROM /messages/* INTO $upstream", SENSOR, [UP], id="messages-star-takes-module"),
    # SRC: without "/*" the prefix is the same. DOC-ROUTES lists only the starred forms (follow edgeHub).
    pytest.param("FROM /messages INTO $upstream", LEAF_DEVICE, [UP], id="messages-without-star"),
    # SRC: a twin change notification's source is /twinChangeNotifications/, outside /messages/.
    pytest.param("FROM /messages/* INTO $upstream", _twin_change(), [], id="messages-star-skips-twin-changes"),
    pytest.param("FROM /* INTO $upstream", _twin_change(), [UP], id="root-takes-twin-changes"),
    pytest.param("FROM /twinChangeNotifications INTO $upstream", _twin_change(), [UP], id="twin-changes"),
    pytest.param("FROM /twinChangeNotifications INTO $upstream", SENSOR, [], id="twin-changes-skip-telemetry"),
    # SRC + RoutingMessageConverter: module messages are /messages/modules/<m>/[outputs/<o>/].
    pytest.param("FROM /messages/modules/* INTO $upstream", LEAF_DEVICE, [], id="modules-star-skips-device"),
    pytest.param("FROM /messages/modules INTO $upstream", SENSOR, [UP], id="modules-without-star"),
    pytest.param("FROM /messages/modules/sensor/* INTO $upstream", SENSOR, [UP], id="module-star"),
    pytest.param("FROM /messages/modules/sensor/* INTO $upstream", OTHER_MODULE, [], id="module-star-other-module"),
    pytest.param("FROM /messages/modules/sensor INTO $upstream", SENSOR_NO_OUTPUT, [UP], id="module-no-output"),
    # SRC: the prefix ends in '/', so a module whose name merely starts with "sens" does not match.
    pytest.param("FROM /messages/modules/sens/* INTO $upstream", SENSOR, [], id="module-prefix-is-whole-name"),
    pytest.param("FROM /messages/modules/sensor/outputs/* INTO $upstream", SENSOR_NO_OUTPUT, [], id="outputs-star"),
    pytest.param("FROM /messages/modules/sensor/outputs INTO $upstream", SENSOR, [UP], id="outputs-no-star"),
    pytest.param("FROM /messages/modules/sensor/outputs/telemetry INTO $upstream", SENSOR, [UP], id="one-output"),
    pytest.param(
        "FROM /messages/modules/sensor/outputs/tele INTO $upstream", SENSOR, [], id="output-prefix-is-whole-name"
    ),
    # SRC: StartsWith(..., OrdinalIgnoreCase). A public sample names module turbofanRouter as turboFanRouter.
    pytest.param(
        "FROM /messages/modules/turboFanRouter/outputs/classOutput INTO $upstream",
        TURBOFAN,
        [UP],
        id="source-module-ignores-case",
    ),
    pytest.param("FROM /messages/modules/sensor/outputs/TELEMETRY INTO $upstream", SENSOR, [UP], id="output-case"),
    # ROUTE + SRC: any path of names parses; one no message has matches nothing.
    pytest.param("FROM /messages/events INTO $upstream", LEAF_DEVICE, [], id="unknown-path-parses-matches-nothing"),
    pytest.param("FROM /messages/modules/*/outputs/telemetry INTO $upstream", SENSOR, [], id="inner-star-is-literal"),
    # ISSUE-5309 + LEX: '<' is not an ID character, so a template placeholder left in is refused.
    pytest.param("FROM /messages/modules/<FROM_MODULE_NAME>/outputs INTO $upstream", SENSOR, ERROR, id="placeholder"),
    # LEX: "123" is an INTEGER_LITERAL and "where" a keyword, not IDs, so they cannot be path items.
    pytest.param("FROM /messages/modules/123/* INTO $upstream", SENSOR, ERROR, id="numeric-path-item"),
    pytest.param("FROM /messages/modules/where/* INTO $upstream", SENSOR, ERROR, id="keyword-path-item"),
    pytest.param("select * from /messages/* into $upstream", SENSOR, [UP], id="select-star-and-lower-case"),
    # ROUTE + ISSUE-4353: the route rule has no EOF, so a WHERE after the sink is silently ignored.
    pytest.param("FROM /messages/* INTO $upstream WHERE kind = 'x'", SENSOR, [UP], id="condition-after-sink-ignored"),
    # SINK: system endpoints other than $upstream are refused; names ignore case.
    pytest.param("FROM /messages/* INTO $UPSTREAM", SENSOR, [UP], id="upstream-ignores-case"),
    pytest.param("FROM /messages/* INTO $downstream", SENSOR, ERROR, id="unknown-system-endpoint"),
    # SINK: one trailing '/' is dropped from the address; BrokeredEndpoint ignores case; ' or " quotes.
    pytest.param(
        'FROM /messages/* INTO BrokeredEndpoint("/modules/inference/inputs/telemetry/")',
        SENSOR,
        ['BrokeredEndpoint("/modules/inference/inputs/telemetry")'],
        id="brokered-endpoint-trailing-slash",
    ),
    pytest.param(
        "FROM /messages/* INTO brokeredendpoint('/modules/inference/inputs/telemetry')",
        SENSOR,
        ['BrokeredEndpoint("/modules/inference/inputs/telemetry")'],
        id="brokered-endpoint-case-and-quotes",
    ),
    pytest.param('FROM /messages/* INTO BrokeredEndpoint("/modules/inference")', SENSOR, ERROR, id="short-address"),
    # LEX: /* ... */ is a comment (hidden channel).
    pytest.param(
        "FROM /messages/modules/sensor/outputs/telemetry WHERE kind = 'x' /* note */ INTO $upstream",
        SENSOR,
        [],
        id="comment",
    ),
    # LEX: the longest match wins, so the "/*" of "/messages/*" opens a comment that the later "*/"
    # closes: the WHERE is commented out and the route takes everything.
    pytest.param(
        "FROM /messages/* WHERE kind = 'x' /* note */ INTO $upstream", SENSOR, [UP], id="star-slash-comment-trap"
    ),
]


@pytest.mark.parametrize(("route", "msg", "expected"), ROUTES)
def test_route_table_matches_edgehub(route, msg, expected):
    if expected == ERROR:
        with pytest.raises(RouteError):
            parse_route("r", route)
        return
    assert [str(sink) for sink in route_message([parse_route("r", route)], msg)] == expected


# (WHERE condition, message, whether the message is routed, or ERROR)
CONDITIONS = [
    # -- operators and lexing -------------------------------------------------------------------
    # LEX: there is no '&&' token; '&&' lexes as an ID, leaving two values side by side.
    pytest.param("a = '1' && b = '0'", PROPS, ERROR, id="double-ampersand-is-not-and"),
    # LEX + VISIT: '||' is OP_CONCAT, string concatenation; on booleans it is a type error.
    pytest.param("a = '1' || b = '0'", PROPS, ERROR, id="double-bar-is-not-or"),
    pytest.param("a || b = '10'", PROPS, True, id="double-bar-concatenates"),
    pytest.param("a = '1' AND b = '0'", PROPS, True, id="and"),
    pytest.param("a = '2' or b = '0'", PROPS, True, id="or-lower-case"),
    # COND + VISIT: '??' gives the left side unless it is undefined; a missing property is undefined.
    pytest.param("(missing ?? 'dflt') = 'dflt'", PROPS, True, id="coalesce-missing-property"),
    pytest.param("($body.level ?? 'info') = 'warn'", BODY, True, id="coalesce-present-body-field"),
    # BODY: a missing $body field is null, which is defined, so '??' keeps it.
    pytest.param("($body.level ?? 'info') = 'info'", NO_LEVEL, False, id="coalesce-missing-body-field-is-null"),
    pytest.param("(missing ?? 5) = 5", PROPS, ERROR, id="coalesce-needs-same-types"),
    # LEX: '!' is an ID character, so "a!='x'" reads property "a!" then "='x'".
    pytest.param("a!='x'", PROPS, False, id="bang-glued-to-name"),
    pytest.param("a != 'x'", PROPS, True, id="not-equal-spaced"),
    pytest.param("a <> 'x'", PROPS, True, id="not-equal-angle"),
    # LEX: '-' is an ID character: "a-1" is one property name.
    pytest.param("a-1 = 'v'", PROPS, True, id="dash-in-name"),
    # LEX: "-1" is one INTEGER_LITERAL, so "3 -1" is two numbers side by side.
    pytest.param("3 -1 = 2", PROPS, ERROR, id="glued-negative-number"),
    pytest.param("3 - 1 = 2", PROPS, True, id="spaced-minus"),
    # LEX: literals are lower-case only; TRUE is a property name (missing: undefined).
    pytest.param("TRUE", PROPS, False, id="upper-case-true-is-a-name"),
    pytest.param("true", PROPS, True, id="true"),
    pytest.param('a = "1"', PROPS, True, id="double-quoted-string"),
    pytest.param("'it\\'s' = \"it's\"", PROPS, True, id="escaped-quote"),
    # -- precedence (COND) -----------------------------------------------------------------------
    pytest.param("a = '1' OR b = '1' AND c = '1'", PROPS, True, id="and-before-or"),
    pytest.param("2 + 3 * 4 = 14", PROPS, True, id="mul-before-add"),
    pytest.param("10 - 4 - 3 = 3", PROPS, True, id="left-associative"),
    pytest.param("'b' > 'a' = true", PROPS, True, id="ordering-before-equality"),
    # COND: NOT binds tighter than comparisons; NOT of a string property is a type error.
    # DOC-QUERY writes NOT before comparisons without parentheses; edgeHub's grammar refuses that here.
    pytest.param("NOT a = '2'", PROPS, ERROR, id="not-binds-tightest"),
    pytest.param("NOT (a = '2')", PROPS, True, id="not-parenthesised"),
    pytest.param("NOT (a = '1') AND b = '0'", PROPS, False, id="not-then-and"),
    # -- three-valued logic (QV, Bool.cs, Null.cs, Undefined.cs) --------------------------------
    pytest.param("missing = 'x'", PROPS, False, id="missing-property-equal-undefined"),
    pytest.param("missing != 'x'", PROPS, False, id="missing-property-unequal-undefined"),
    pytest.param("missing = 'x' OR true", PROPS, True, id="undefined-or-true"),
    pytest.param("NOT (missing = 'x' AND false)", PROPS, True, id="undefined-and-false-is-false"),
    pytest.param("null", PROPS, False, id="null-condition"),
    pytest.param("NOT null", PROPS, True, id="not-null-is-true"),
    pytest.param("a = undefined", PROPS, ERROR, id="compare-with-undefined-refused"),
    # BODY: a missing field is QueryValue.Null; QV: Null and String are different types, so unequal.
    pytest.param("$body.level <> 'debug'", NO_LEVEL, True, id="missing-level-differs-from-debug"),
    pytest.param("$body.level <> 'debug'", NUMERIC_LEVEL, True, id="numeric-level-differs-from-debug"),
    pytest.param("$body.level <> 'warn'", BODY, False, id="same-level"),
    pytest.param("$body.error != null", NO_LEVEL, False, id="missing-error-is-null"),
    pytest.param("$body.error != null", STRING_ERROR, True, id="string-error-is-not-null"),
    pytest.param("$body.error != null", NUMERIC_LEVEL, False, id="json-null-error"),
    pytest.param("$body.error != null", OBJECT_ERROR, False, id="object-error-is-undefined"),
    pytest.param("$body.error = null", NO_LEVEL, True, id="missing-equals-null"),
    # QV: different types order Bool < Double < String < Null.
    pytest.param("$body.text > 1000", BODY, True, id="string-ranks-above-numbers"),
    pytest.param("$body.temp < 'a'", BODY, True, id="number-ranks-below-strings"),
    pytest.param("$body.temp = '5'", BODY, False, id="number-never-equals-text"),
    # QV: a $body value converts to Bool only when it is a JSON boolean; & and | need two booleans.
    pytest.param("$body.flag", BODY, True, id="bare-body-boolean"),
    pytest.param("$body.level", BODY, False, id="bare-body-string"),
    pytest.param("NOT $body.off", BODY, True, id="not-body-false"),
    pytest.param("NOT $body.missing", BODY, False, id="not-missing-body-field-undefined"),
    pytest.param("NOT ($body.off AND $body.missing)", BODY, False, id="body-and-is-not-absorbing"),
    # -- $body paths (VISIT, JsonPath.g4, BODY, NEWTONSOFT) --------------------------------------
    pytest.param("$body.temp = 5", BODY, True, id="body-number"),
    pytest.param("$Body.temp = 5", BODY, True, id="body-prefix-ignores-case"),
    pytest.param("$body.Temp = 5", BODY, False, id="body-keys-are-case-sensitive"),
    pytest.param("$body.readings[1] = 40", BODY, True, id="body-array-index"),
    pytest.param("$body.température = 21", BODY, True, id="body-non-ascii-key"),
    pytest.param("$body.sensor-id = 's-1'", BODY, True, id="body-key-with-dash"),
    pytest.param("$body.['sensor-id'] = 's-1'", BODY, ERROR, id="body-bracket-key-refused"),
    pytest.param("IS_DEFINED($body.obj)", BODY, False, id="body-object-undefined"),
    pytest.param("IS_DEFINED($body.missing)", BODY, True, id="missing-body-field-is-defined"),
    pytest.param("IS_DEFINED($body.x)", TEXT_BODY, False, id="non-json-body-undefined"),
    pytest.param("IS_DEFINED($body.x)", NO_ENCODING, False, id="no-content-encoding-undefined"),
    # NEWTONSOFT: JObject.Parse reads an ISO date string as a date, an object to edgeHub: undefined.
    pytest.param("$body.ts = '2024-01-01T00:00:00Z'", BODY, False, id="iso-date-is-not-a-string"),
    pytest.param("IS_STRING($body.ts)", BODY, False, id="iso-date-is-string-false"),
    pytest.param("$body.day = '2024-01-01'", BODY, True, id="date-without-time-stays-a-string"),
    # VISIT: an application property literally named "$body.x" wins; {$body.x} is the body query.
    pytest.param("$body.x = 'p'", BODY, True, id="app-property-shadows-body"),
    pytest.param("{$body.x} = 1", BODY, True, id="escaped-body-query"),
    # VISIT: QueryValue has no '%' and no unary '-': edgeHub fails building the expression.
    pytest.param("$body.temp % 2 = 1", BODY, ERROR, id="modulo-on-body-refused"),
    pytest.param("- $body.temp = -5", BODY, ERROR, id="negate-body-refused"),
    pytest.param("$body.temp * 2 = 10", BODY, True, id="multiply-body"),
    # -- properties (VISIT, Message.cs) -----------------------------------------------------------
    pytest.param("severity = '3'", PROPS, True, id="property-names-ignore-case"),
    pytest.param("severity > 2", PROPS, ERROR, id="string-property-vs-number"),
    pytest.param("AS_NUMBER(severity) > 2", PROPS, True, id="as-number"),
    pytest.param("$connectionModuleId = 'sensor'", PROPS, True, id="system-property"),
    pytest.param("$connectionDeviceId = 'edge1'", PROPS, True, id="device-id"),
    # The condition the IoT-Hub-Portal issue #1390 thought invalid: edgeHub accepts it.
    pytest.param("NOT IS_DEFINED($connectionModuleId)", LEAF_DEVICE, True, id="leaf-device-has-no-module-id"),
    pytest.param("NOT IS_DEFINED($connectionModuleId)", SENSOR, False, id="module-has-module-id"),
    # -- functions (VISIT's table, FN) ------------------------------------------------------------
    pytest.param("IS_ARRAY(a)", PROPS, ERROR, id="unknown-function"),
    pytest.param("is_string(kind)", PROPS, True, id="function-names-ignore-case"),
    pytest.param("IS_STRING(missing)", PROPS, False, id="is-string-undefined"),
    pytest.param("IS_NUMBER($body.temp) AND IS_BOOL($body.flag)", BODY, True, id="is-number-is-bool"),
    # FN: IsNull compares with the shared QueryValue.Null by reference: false for a missing field,
    # true for any value found in the body, a JSON null or not.
    pytest.param("IS_NULL($body.label)", BODY, True, id="is-null-json-null"),
    pytest.param("IS_NULL($body.missing)", BODY, False, id="is-null-missing-field"),
    pytest.param("IS_NULL($body.name)", BODY, True, id="is-null-string-quirk"),
    pytest.param("IS_NULL(null)", PROPS, True, id="is-null-literal"),
    # FN: AsNumber parses with NumberStyles.Any (group separators, surrounding space).
    pytest.param("AS_NUMBER('1,000') = 1000", PROPS, True, id="as-number-thousands"),
    pytest.param("AS_NUMBER(' 42 ') = 42", PROPS, True, id="as-number-spaces"),
    pytest.param("IS_DEFINED(AS_NUMBER('abc'))", PROPS, False, id="as-number-undefined"),
    pytest.param("UPPER(kind) = 'ALERT' AND LOWER($body.name) = 'abc'", BODY, True, id="upper-lower"),
    pytest.param("STARTS_WITH($connectionModuleId, 'sen') AND ENDS_WITH(kind, 'rt')", PROPS, True, id="affixes"),
    pytest.param("CONTAINS(kind, 'ler') AND LENGTH(kind) = 5 AND INDEX_OF(kind, 'e') = 2", PROPS, True, id="search"),
    pytest.param("SUBSTRING(kind, 1, 3) = 'ler' AND CONCAT(a, b, 'x') = '10x'", PROPS, True, id="substring-concat"),
    pytest.param("ABS(-5) = 5 AND SQRT(16) = 4 AND POWER(2, 10) = 1024 AND SQUARE(3) = 9", PROPS, True, id="math"),
    pytest.param("FLOOR(2.7) = 2 AND CEILING(2.1) = 3 AND SIGN(-3) = -1 AND EXP(0) = 1", PROPS, True, id="rounding"),
    pytest.param("LOWER(3) = '3'", PROPS, ERROR, id="function-argument-type"),
    # CO: strings compare ordinally, so upper case sorts first.
    pytest.param("'a' < 'B'", PROPS, False, id="ordinal-string-order"),
]


@pytest.mark.parametrize(("condition", "msg", "expected"), CONDITIONS)
def test_condition_table_matches_edgehub(condition, msg, expected):
    route = f"FROM /* WHERE {condition} INTO $upstream"
    if expected == ERROR:
        with pytest.raises(RouteError):
            parse_route("r", route)
        return
    assert parse_route("r", route).matches(msg) is expected


def test_conformance_table_has_at_least_sixty_rows():
    assert len(ROUTES) + len(CONDITIONS) >= 60
