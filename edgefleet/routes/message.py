"""A message as edgeHub routes it, and its per-message evaluation state (properties, parsed body)."""

from __future__ import annotations

import calendar
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from edgefleet.routes.values import UNDEFINED

logger = logging.getLogger(__name__)

__all__ = ["Message", "MessageContext", "MessageKind", "is_json_date"]

MessageKind = Literal["telemetry", "twin_change_notification"]

_JSON_CONTENT_TYPE = "application/json"
# The documented encodings for `$body` queries; utf-8-sig also accepts a byte-order mark.
_BODY_CODECS: Final = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "utf-32": "utf-32"}
_NOT_LOADED: Final = object()
# Newtonsoft's DateTimeParser (the ISO form JObject.Parse turns into a date) and its "/Date(ms)/" form.
_ISO_DATE_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,7})?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_MS_DATE_RE: Final = re.compile(r"/Date\(-?\d+(?:[+-]\d{4})?\)/")


def is_json_date(text: str) -> bool:
    """Return whether Newtonsoft's JSON reader (edgeHub's body parser) reads this string as a date."""
    # DateTimeUtils.TryParseDateTime: 19 to 40 characters, a digit first and 'T' at index 10, then a
    # valid yyyy-MM-ddTHH:mm:ss[.fffffff][Z|+HH[:mm]]; or Microsoft's "/Date(ticks[+HHmm])/".
    if text.startswith("/Date("):
        return _MS_DATE_RE.fullmatch(text) is not None
    if not 19 <= len(text) <= 40 or not text[0].isdigit() or text[10] != "T":
        return False
    match = _ISO_DATE_RE.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    return hour < 24 and minute < 60 and second < 60


@dataclass(frozen=True, slots=True)
class Message:
    """One message as edgeHub routes it.

    `properties` are the application properties and `system_properties` the system ones, both
    strings as on the wire; system properties are keyed by their query name without `$`
    (`contentType`, `contentEncoding`, `messageId`, `correlationId`, `userId`, ...). The
    connection identities come from the fields, which win over `system_properties`.
    Property names are matched case-insensitively, as IoT Hub does. `output` is None for a
    message sent without an output (and for downstream devices); `kind` separates
    device-to-cloud messages from twin change notifications (`/twinChangeNotifications`).
    """

    connection_device_id: str
    connection_module_id: str | None = None
    output: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    system_properties: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    kind: MessageKind = "telemetry"
    # Per-message evaluation state (lower-cased property maps, the parsed body) shared by every
    # route that looks at this message, so the body is parsed at most once.
    _cache: dict[str, MessageContext] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _context(self) -> MessageContext:
        """Return this message's evaluation state, creating it on first use."""
        context = self._cache.get("context")
        if context is None:
            context = self._cache["context"] = MessageContext(self)
        return context


class MessageContext:
    """Evaluation state for one message."""

    __slots__ = ("_body", "has_dollar_properties", "message", "properties", "system_properties")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.properties = {key.lower(): value for key, value in message.properties.items()}
        self.has_dollar_properties = any(key.startswith("$") for key in self.properties)
        system = {key.lower(): value for key, value in message.system_properties.items()}
        system["connectiondeviceid"] = message.connection_device_id
        if message.connection_module_id is None:
            system.pop("connectionmoduleid", None)
        else:
            system["connectionmoduleid"] = message.connection_module_id
        self.system_properties = system
        self._body: object = _NOT_LOADED

    def body(self) -> object:
        """Return the parsed JSON body object, or UNDEFINED when `$body` cannot be queried."""
        if self._body is _NOT_LOADED:
            self._body = _parse_body(self.message, self.system_properties)
        return self._body


def _parse_body(message: Message, system_properties: Mapping[str, str]) -> object:
    """Parse a message body for `$body` queries, or return UNDEFINED when it is not queryable JSON."""
    content_type = system_properties.get("contenttype", "")
    codec = _BODY_CODECS.get(system_properties.get("contentencoding", "").lower())
    if content_type.lower() != _JSON_CONTENT_TYPE or codec is None:
        return UNDEFINED
    try:
        # parse_int=float: the query language has a single number type.
        parsed = json.loads(message.body.decode(codec), parse_int=float)
    except (UnicodeDecodeError, ValueError) as exc:
        logger.warning(
            "message from %s/%s declares JSON but its body is not: %s",
            message.connection_device_id,
            message.connection_module_id,
            exc,
        )
        return UNDEFINED
    # edgeHub parses the body with JObject.Parse: an array or scalar body fails, so every query is undefined.
    return parsed if isinstance(parsed, dict) else UNDEFINED
