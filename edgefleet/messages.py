"""The message contracts: telemetry readings, batch envelopes, predictions and dead letters.

Every message is compact UTF-8 JSON that names its versioned `schema`. This module is the
one place that parses and writes them. It imports only the standard library, msgspec and the
stdlib-only `edgefleet.errors`: the edge image has no pandas, and the sensor and the inference
module parse thousands of readings per second, so validation is hand-written on frozen
slotted dataclasses instead of pydantic models.

Readings take a fast path, chosen by profile (`benchmarks/sensor_parse.py`): msgspec decodes a
payload of the usual shape (only the contract's keys, each of its JSON type) into typed structs,
and what an earlier reading settled (its device id, its features' names in that order) is not
checked again. Anything else (a payload msgspec refuses, an extra key, an offset timestamp, a
new bad name) goes through the stdlib path from the raw bytes, so accepted readings, reason
codes and details are exactly the stdlib path's. `encode_reading` writes a Reading with msgspec.

Payload-level problems (too big, not UTF-8, not JSON, not an object, a broken batch
envelope) raise `MessageError`; reading-level problems are reported per reading by
`decode_payload`, so one bad reading never loses its neighbours.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import msgspec

from edgefleet.errors import EdgefleetError

logger = logging.getLogger(__name__)

TELEMETRY_SCHEMA = "edgefleet.telemetry/1"
BATCH_SCHEMA = "edgefleet.batch/1"
DEADLETTER_SCHEMA = "edgefleet.deadletter/1"
# Set these on every edge message: edgeHub evaluates `$body` route conditions only then.
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

DEFAULT_MAX_BYTES = 256 * 1024  # IoT Hub's device-to-cloud message size limit
DEADLETTER_PAYLOAD_BYTES = 4096
# IoT Hub meters device-to-cloud traffic in 4 KB units: a 4,097-byte message costs two.
UNIT_BYTES = 4096
DEADLETTER_DETAIL_CHARS = 1024
MAX_DEVICE_ID_CHARS = 128
MAX_FEATURE_NAME_CHARS = 128
# Each feature name becomes a lake column: a runaway device must not widen the lake without bound.
MAX_FEATURES = 256
MAX_SEQ = 2**63 - 1  # the lake stores seq as int64
# pandas (lake, training) holds timestamps as int64 ns, which ends in 2262; before 1970 is a clock fault.
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2262, 1, 1, tzinfo=UTC)
# Lake rows are flat: a feature with one of these names would collide with a bookkeeping column,
# and training ignores these names and prefixes (kept in step with edgefleet/history.py, which
# cannot be imported here because it needs pandas).
# Lake and history columns that are never features (edgefleet.history reads these too).
RESERVED_FEATURE_NAMES = frozenset(
    {
        "device_id",
        "seq",
        "ts",
        "label",
        "date",
        "schema",
        "source_module",
        # the lake's message columns (edgefleet.lake.MESSAGE_COLUMNS)
        "message_id",
        "correlation_id",
        "properties",
    }
)
RESERVED_FEATURE_PREFIXES = ("prediction_", "edge_", "_")

# Reason codes: the `.reason` of a MessageError and the `reason` of a dead letter.
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
WRONG_SCHEMA = "wrong_schema"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
BAD_TIMESTAMP = "bad_timestamp"
BAD_DEVICE_ID = "bad_device_id"
BAD_SEQ = "bad_seq"
BAD_FEATURE_NAME = "bad_feature_name"
NO_FEATURES = "no_features"
OVERSIZE = "oversize"
EMPTY_BATCH = "empty_batch"
# A valid reading the edge could not answer (never a MessageError: the reading kept its contract).
PREDICTION_FAILED = "prediction_failed"  # neither its own model nor the fleet model gave a finite value
INTERNAL_ERROR = "internal_error"  # a bug or a broken dependency while answering it; see the module's log
PROCESSING_REASONS = frozenset({PREDICTION_FAILED, INTERNAL_ERROR})
# The contract's reason codes: what `decode_payload` can say about a payload or reading.
REASONS = frozenset(
    {
        NOT_UTF8,
        NOT_JSON,
        NOT_OBJECT,
        WRONG_SCHEMA,
        MISSING_FIELD,
        WRONG_TYPE,
        NON_FINITE,
        BAD_TIMESTAMP,
        BAD_DEVICE_ID,
        BAD_SEQ,
        BAD_FEATURE_NAME,
        NO_FEATURES,
        OVERSIZE,
        EMPTY_BATCH,
        *PROCESSING_REASONS,
    }
)
# Reason codes of the edge's own checks on a well-formed reading (the sensor's guards): they need
# context the message alone does not carry (the topic it arrived on). The sensor also uses
# BAD_TIMESTAMP for readings dated outside its window around the edge's clock.
DEVICE_MISMATCH = "device_mismatch"
EDGE_REASONS = frozenset({DEVICE_MISMATCH})

# Which model answered a reading: the device's own, the fleet model, or the fleet model plus the
# device's own small correction (partial pooling; `edgefleet.bundle.Correction`).
ModelKind = Literal["device", "fleet", "fleet_corrected"]
MODEL_KINDS: frozenset[str] = frozenset({"device", "fleet", "fleet_corrected"})
_MISSING: Any = object()


class MessageError(EdgefleetError):
    """Raise when a payload or reading breaks the message contract."""

    def __init__(self, reason: str, detail: str) -> None:
        # Both go to args so the error survives pickling (process pools, multiprocessing queues).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _fail(reason: str, detail: str) -> NoReturn:
    raise MessageError(reason, detail)


def _kind(value: object) -> str:
    """Name a value's type the way a JSON producer would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: object, max_chars: int = 60) -> str:
    """Return a bounded repr for error details (repr also escapes lone surrogates)."""
    try:
        text = repr(value)
    except RecursionError:  # a deeply nested JSON value
        return f"<deeply nested {_kind(value)}>"
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _number(value: object, where: str) -> float:
    """Return `value` as a finite float, or raise: bools are not numbers here."""
    if type(value) is float:
        number = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            _fail(NON_FINITE, f"{where} is too large for a float: {_short(value)}")
    else:
        _fail(WRONG_TYPE, f"{where} must be a number, got {_kind(value)} {_short(value)}")
    if not math.isfinite(number):
        _fail(NON_FINITE, f"{where} must be finite, got {number!r}")
    return number


def _check_name(name: object, what: str, max_chars: int, reason: str) -> None:
    """Raise unless `name` is a non-empty, printable, unpadded string of at most `max_chars`."""
    if type(name) is not str:
        _fail(WRONG_TYPE, f"{what} must be a string, got {_kind(name)}")
    if not name:
        _fail(reason, f"{what} is empty")
    if len(name) > max_chars:
        _fail(reason, f"{what} has {len(name)} characters; at most {max_chars} are allowed")
    # isprintable() is False for control, format, surrogate and private-use characters;
    # lone surrogates would also make the message impossible to re-encode as UTF-8.
    if not name.isprintable():
        _fail(reason, f"{what} contains control or non-printable characters: {_short(name)}")
    if name[0] == " " or name[-1] == " ":
        # "dev-1 " and "dev-1" would silently split one device's history in two.
        _fail(reason, f"{what} has leading or trailing spaces: {_short(name)}")


# Feature names repeat across nearly every reading: remember the ones that passed so the hot
# path pays one set lookup per feature. Bounded so junk names cannot grow it forever.
_GOOD_FEATURE_NAMES: set[str] = set()
_GOOD_FEATURE_NAMES_MAX = 4096


def _check_feature_name(name: object) -> None:
    """Raise unless `name` is a usable feature (and so lake column) name."""
    if type(name) is str and name in _GOOD_FEATURE_NAMES:
        return
    _check_name(name, "feature name", MAX_FEATURE_NAME_CHARS, BAD_FEATURE_NAME)
    assert isinstance(name, str)  # _check_name raised otherwise
    if name in RESERVED_FEATURE_NAMES or name.startswith(RESERVED_FEATURE_PREFIXES):
        _fail(BAD_FEATURE_NAME, f"feature name {name!r} is reserved for lake bookkeeping")
    if len(_GOOD_FEATURE_NAMES) < _GOOD_FEATURE_NAMES_MAX:
        _GOOD_FEATURE_NAMES.add(name)


def _check_features(features: object) -> tuple[tuple[str, float], ...]:
    """Return the features with every value a float, or raise naming the first problem."""
    if type(features) is not tuple:
        _fail(WRONG_TYPE, f"features must be a tuple of (name, value) pairs, got {_kind(features)}")
    if not features:
        _fail(NO_FEATURES, "a reading needs at least one feature")
    if len(features) > MAX_FEATURES:
        _fail(OVERSIZE, f"{len(features)} features; at most {MAX_FEATURES} are allowed")
    converted: list[tuple[str, float]] | None = None
    for index, pair in enumerate(features):
        if type(pair) is not tuple or len(pair) != 2:
            _fail(WRONG_TYPE, f"features[{index}] must be a (name, value) pair, got {_short(pair)}")
        name, value = pair
        _check_feature_name(name)
        if type(value) is float:
            if not math.isfinite(value):
                _fail(NON_FINITE, f"feature {name!r} must be finite, got {value!r}")
            if converted is not None:
                converted.append(pair)
        else:
            number = _number(value, f"feature {name!r}")
            if converted is None:
                converted = list(features[:index])
            converted.append((name, number))
    if len(features) > 1 and len({pair[0] for pair in features}) != len(features):
        _fail(WRONG_TYPE, "feature names must be unique")
    return features if converted is None else tuple(converted)


# Device ids and feature-name orders repeat across nearly every reading, like feature names.
_GOOD_DEVICE_IDS: set[str] = set()
_GOOD_DEVICE_IDS_MAX = 65_536
_GOOD_FEATURE_ORDERS: set[tuple[str, ...]] = set()
_GOOD_FEATURE_ORDERS_MAX = 1024


def _remember(good: set[Any], value: object, limit: int) -> None:
    if len(good) < limit:
        good.add(value)


def _utc(ts: object, what: str) -> datetime:
    """Return `ts` as a timezone-aware UTC datetime within the lake's range."""
    if not isinstance(ts, datetime):
        _fail(WRONG_TYPE, f"{what} must be a datetime, got {_kind(ts)}")
    if ts.tzinfo is not UTC:
        if ts.tzinfo is None or ts.utcoffset() is None:
            _fail(BAD_TIMESTAMP, f"{what} {ts.isoformat()!r} has no timezone; send UTC with 'Z' or an offset")
        try:
            ts = ts.astimezone(UTC)
        except OverflowError:
            _fail(BAD_TIMESTAMP, f"{what} {ts.isoformat()!r} is out of range")
    if not TS_MIN <= ts < TS_MAX:
        _fail(BAD_TIMESTAMP, f"{what} {format_ts(ts)!r} is outside {TS_MIN.year}..{TS_MAX.year - 1}")
    return ts


def format_ts(ts: datetime) -> str:
    """Format a UTC datetime as ISO-8601 with `Z` (microseconds only when non-zero)."""
    return ts.replace(tzinfo=None).isoformat() + "Z"


def parse_ts(text: object, what: str = "ts") -> datetime:
    """Parse an ISO-8601 timestamp with `Z` or an offset into a UTC datetime."""
    if type(text) is not str:
        _fail(WRONG_TYPE, f"{what} must be an ISO-8601 string, got {_kind(text)} {_short(text)}")
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        _fail(BAD_TIMESTAMP, f"{what} {_short(text)} is not an ISO-8601 timestamp")
    return _utc(ts, what)


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated telemetry reading; build it with `parse_reading` or directly (same checks)."""

    device_id: str
    seq: int
    ts: datetime
    features: tuple[tuple[str, float], ...]
    label: float | None = None
    # When the edge's sensor module received the reading (it stamps it; devices do not send it).
    received_ts: datetime | None = None

    def __post_init__(self) -> None:
        _check_name(self.device_id, "device_id", MAX_DEVICE_ID_CHARS, BAD_DEVICE_ID)
        seq = self.seq
        if type(seq) is not int and (not isinstance(seq, int) or isinstance(seq, bool)):
            _fail(WRONG_TYPE, f"seq must be an integer, got {_kind(seq)} {_short(seq)}")
        if not 0 <= seq <= MAX_SEQ:
            _fail(BAD_SEQ, f"seq must be between 0 and {MAX_SEQ}, got {_short(seq)}")
        ts = _utc(self.ts, "ts")
        if ts is not self.ts:
            object.__setattr__(self, "ts", ts)
        features = _check_features(self.features)
        if features is not self.features:
            object.__setattr__(self, "features", features)
        if self.label is not None:
            label = _number(self.label, "label")
            if label is not self.label:
                object.__setattr__(self, "label", label)
        if self.received_ts is not None:
            received_ts = _utc(self.received_ts, "received_ts")
            if received_ts is not self.received_ts:
                object.__setattr__(self, "received_ts", received_ts)

    def feature(self, name: str) -> float | None:
        """Return the value of feature `name`, or None when the reading lacks it."""
        for feature_name, value in self.features:
            if feature_name == name:
                return value
        return None

    def feature_values(self, names: Sequence[str]) -> list[float]:
        """Return values in `names` order, NaN where the reading lacks one (the bundle fills those)."""
        values = dict(self.features)
        nan = math.nan
        return [values.get(name, nan) for name in names]

    def to_json_obj(self) -> dict[str, Any]:
        """Return the telemetry object; `parse_reading` turns it back into an equal Reading."""
        obj: dict[str, Any] = {
            "schema": TELEMETRY_SCHEMA,
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": format_ts(self.ts),
            "features": dict(self.features),
        }
        if self.label is not None:
            obj["label"] = self.label
        if self.received_ts is not None:
            obj["received_ts"] = format_ts(self.received_ts)
        return obj

    def stamped(self, received_ts: datetime) -> Reading:
        """Return this reading with the edge's receive time set."""
        # Everything but the receive time was checked when this reading was built.
        return _trusted_reading(
            self.device_id, self.seq, self.ts, self.features, self.label, _utc(received_ts, "received_ts")
        )


def _trusted_reading(
    device_id: str,
    seq: int,
    ts: datetime,
    features: tuple[tuple[str, float], ...],
    label: float | None,
    received_ts: datetime | None,
) -> Reading:
    """Build a Reading from values already checked as `Reading.__post_init__` would."""
    reading = object.__new__(Reading)
    setattr_ = object.__setattr__
    setattr_(reading, "device_id", device_id)
    setattr_(reading, "seq", seq)
    setattr_(reading, "ts", ts)
    setattr_(reading, "features", features)
    setattr_(reading, "label", label)
    setattr_(reading, "received_ts", received_ts)
    return reading


class _TelemetryIn(msgspec.Struct, forbid_unknown_fields=True):
    """A telemetry object of the usual shape: only the contract's keys, each of its JSON type.

    msgspec decodes a float field from a JSON int as float() would, refuses booleans, and
    refuses numbers beyond a float's range instead of reading them as infinity.
    """

    schema: str
    device_id: str
    seq: int
    ts: str
    features: dict[str, float]
    label: float | None = None
    received_ts: str | None = None


class _BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """A batch envelope of the usual shape: nothing beside its schema and readings."""

    schema: str
    readings: list[_TelemetryIn]


_isfinite = math.isfinite
_fromisoformat = datetime.fromisoformat


def _fast_ts(text: str | None) -> datetime | None:
    """Return a UTC timestamp text as `parse_ts` would, or None when it needs `parse_ts`'s full handling."""
    if text is None:
        return None
    try:
        ts = _fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is not UTC or not TS_MIN <= ts < TS_MAX:
        return None
    return ts


def _fast_reading(item: _TelemetryIn) -> Reading | None:
    """Return the Reading `parse_reading` would give for a decoded reading, or None when it must decide.

    None means only "not settled here": the caller then runs the stdlib path, which names the problem.
    """
    seq = item.seq
    if item.schema != TELEMETRY_SCHEMA or not 0 <= seq <= MAX_SEQ:
        return None
    device_id = item.device_id
    if device_id not in _GOOD_DEVICE_IDS:
        try:
            _check_name(device_id, "device_id", MAX_DEVICE_ID_CHARS, BAD_DEVICE_ID)
        except MessageError:
            return None
        _remember(_GOOD_DEVICE_IDS, device_id, _GOOD_DEVICE_IDS_MAX)
    ts = _fast_ts(item.ts)
    received_text = item.received_ts
    received_ts = None if received_text is None else _fast_ts(received_text)
    if ts is None or (received_ts is None and received_text is not None):
        return None
    features = item.features
    names = tuple(features)
    if names not in _GOOD_FEATURE_ORDERS:
        if not 0 < len(names) <= MAX_FEATURES:
            return None
        try:
            for name in names:
                _check_feature_name(name)
        except MessageError:
            return None
        _remember(_GOOD_FEATURE_ORDERS, names, _GOOD_FEATURE_ORDERS_MAX)
    # msgspec never gives NaN or infinity; should a version ever do, the sum would show it.
    label = item.label
    if not _isfinite(sum(features.values(), 0.0 if label is None else label)):
        return None
    return _trusted_reading(device_id, seq, ts, tuple(features.items()), label, received_ts)


def parse_reading(obj: object) -> Reading:
    """Validate one decoded telemetry object and return it as a Reading."""
    if type(obj) is not dict:
        _fail(NOT_OBJECT, f"a reading must be a JSON object, got {_kind(obj)}")
    schema = obj.get("schema", _MISSING)
    if schema != TELEMETRY_SCHEMA:
        if schema is _MISSING:
            _fail(MISSING_FIELD, f"reading has no 'schema'; expected {TELEMETRY_SCHEMA!r}")
        _fail(WRONG_SCHEMA, f"schema is {_short(schema)}; expected {TELEMETRY_SCHEMA!r}")
    # Extra top-level keys are ignored, not rejected: a prediction is a telemetry object plus
    # `prediction`/`edge`, so sinks can read it as a reading, and a producer may add an optional
    # field within /1 without breaking edges that run older code. Nothing here needs them, and
    # to_json_obj() does not carry them forward.
    try:
        device_id = obj["device_id"]
        seq = obj["seq"]
        ts_text = obj["ts"]
        features = obj["features"]
    except KeyError as err:
        _fail(MISSING_FIELD, f"reading has no {err.args[0]!r}")
    if type(features) is not dict:
        _fail(WRONG_TYPE, f"features must be an object of name: number, got {_kind(features)}")
    received_text = obj.get("received_ts")
    received_ts = None if received_text is None else parse_ts(received_text, "received_ts")
    # `"label": null` is read as absent: serialisers write a missing value as null.
    return Reading(device_id, seq, parse_ts(ts_text), tuple(features.items()), obj.get("label"), received_ts)


def _refuse_constant(name: str) -> NoReturn:
    # json accepts NaN/Infinity/-Infinity by default, but they are not JSON and nothing
    # downstream (edgeHub `$body` routes, the lake, other languages) can read them.
    _fail(NON_FINITE, f"{name} is not valid JSON; send finite numbers only")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# msgspec refuses what the stdlib decoder may let through (NaN, lone surrogates, 1e400, a BOM):
# such payloads fall back to the stdlib path, which names the reason.
_TELEMETRY_DECODER = msgspec.json.Decoder(_TelemetryIn)
_BATCH_DECODER = msgspec.json.Decoder(_BatchIn)
_FAST_ENCODER = msgspec.json.Encoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_BATCH_HEAD = ('{"schema":' + json.dumps(BATCH_SCHEMA) + ',"readings":[').encode()
_BATCH_TAIL = b"]}"


def decode_json(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> object:
    """Decode one UTF-8 JSON payload of at most `max_bytes`, refusing NaN and Infinity."""
    if len(payload) > max_bytes:
        _fail(OVERSIZE, f"payload is {len(payload)} bytes; at most {max_bytes} are allowed")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as err:
        _fail(NOT_UTF8, f"payload is not UTF-8 (byte {err.start}: {err.reason})")
    if text.startswith("\ufeff"):
        # RFC 8259 lets parsers ignore a byte-order mark, and some Windows producers write one.
        text = text[1:]
    try:
        return _DECODER.decode(text)
    except MessageError:
        raise
    except RecursionError:
        _fail(NOT_JSON, "payload nests too deeply")
    except ValueError as err:  # JSONDecodeError, and ints beyond Python's digit limit
        _fail(NOT_JSON, f"payload is not JSON ({_short(str(err), 120)})")


def decode_payload(
    payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[Reading], list[tuple[MessageError, object]]]:
    """Decode a telemetry object or batch into good readings and (error, item) for each bad one.

    Raises MessageError for the payload as a whole (oversize, not UTF-8, not JSON, not an
    object, a batch without a non-empty `readings` array). A single telemetry object that
    fails validation is reported in the error list like a bad reading inside a batch.
    """
    if len(payload) <= max_bytes:
        fast = _decode_fast(payload)
        if fast is not None:
            return fast, []
    return _decode_payload_stdlib(payload, max_bytes)


def _decode_payload_stdlib(
    payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[Reading], list[tuple[MessageError, object]]]:
    """Decode a payload as `decode_payload` does, on the stdlib path only: it names every problem."""
    obj = decode_json(payload, max_bytes)
    if type(obj) is not dict:
        _fail(NOT_OBJECT, f"payload must be a JSON object, got {_kind(obj)}")
    if obj.get("schema") == BATCH_SCHEMA:
        items = obj.get("readings", _MISSING)
        if items is _MISSING:
            _fail(MISSING_FIELD, "batch has no 'readings'")
        if type(items) is not list:
            _fail(WRONG_TYPE, f"batch 'readings' must be an array, got {_kind(items)}")
        if not items:
            _fail(EMPTY_BATCH, "batch has no readings")
    else:
        items = [obj]
    readings: list[Reading] = []
    errors: list[tuple[MessageError, object]] = []
    for item in items:
        try:
            readings.append(parse_reading(item))
        except MessageError as err:
            errors.append((err, item))
    if errors:
        logger.debug("Rejected %d of %d readings; first: %s", len(errors), len(items), errors[0][0])
    return readings, errors


def _decode_fast(payload: bytes) -> list[Reading] | None:
    """Return the readings of a payload whose every reading takes the fast path, else None (never raises)."""
    try:
        items = [_TELEMETRY_DECODER.decode(payload)]
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        try:
            batch = _BATCH_DECODER.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return None
        items = batch.readings
        if batch.schema != BATCH_SCHEMA or not items:
            return None
    readings = []
    for item in items:
        reading = _fast_reading(item)
        if reading is None:
            return None
        readings.append(reading)
    return readings


class _TelemetryJson(msgspec.Struct, omit_defaults=True):
    """The telemetry object in `Reading.to_json_obj`'s key order, for msgspec to write in one pass."""

    schema: str
    device_id: str
    seq: int
    ts: datetime  # msgspec writes a UTC datetime exactly as format_ts does
    features: dict[str, float]
    label: float | None = None
    received_ts: datetime | None = None


def encode_reading(reading: Reading) -> bytes:
    """Serialise a Reading as its compact UTF-8 telemetry JSON (what `encode_json(reading.to_json_obj())` means)."""
    # A Reading's floats are finite, its strings printable Unicode and its datetimes UTC: nothing
    # `encode_json` would refuse, and nothing msgspec would write differently but float exponents.
    return _FAST_ENCODER.encode(
        _TelemetryJson(
            TELEMETRY_SCHEMA,
            reading.device_id,
            reading.seq,
            reading.ts,
            dict(reading.features),
            reading.label,
            reading.received_ts,
        )
    )


def encode_json(obj: object) -> bytes:
    """Serialise `obj` as compact UTF-8 JSON, refusing NaN and Infinity."""
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        _fail(NOT_UTF8, "object holds a string that is not valid Unicode (a lone surrogate)")
    except RecursionError:
        _fail(WRONG_TYPE, "object nests too deeply to encode")
    except ValueError as err:  # allow_nan=False, or a circular reference
        reason = NON_FINITE if "float" in str(err) else WRONG_TYPE
        _fail(reason, f"cannot encode object as JSON: {err}")
    except TypeError as err:
        _fail(WRONG_TYPE, f"cannot encode object as JSON: {err}")


BATCH_OVERHEAD_BYTES = len(_BATCH_HEAD) + len(_BATCH_TAIL)


def batch_envelope(items: Sequence[bytes]) -> bytes:
    """Wrap already-encoded reading objects in one batch envelope."""
    return _BATCH_HEAD + b",".join(items) + _BATCH_TAIL


class BatchPacker:
    """Pack encoded objects, in order, into batch envelopes of at most `max_bytes` (not thread-safe).

    An item that does not fit beside the open batch closes it and opens the next one; an item
    too big for any batch still gets an envelope of its own (senders that must stay under the
    limit check each item against `max_bytes - BATCH_OVERHEAD_BYTES` before adding it).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: list[bytes] = []
        self._bytes = BATCH_OVERHEAD_BYTES

    def add(self, item: bytes) -> bytes | None:
        """Add one encoded object; return the open batch, closed, when the item did not fit beside it."""
        full = None
        # Each item is sized once and the total kept incrementally: packing stays O(total bytes).
        added_bytes = len(item) + (1 if self._items else 0)  # the separating comma
        if self._items and self._bytes + added_bytes > self.max_bytes:
            full = self.take()
            added_bytes = len(item)
        self._items.append(item)
        self._bytes += added_bytes
        return full

    def take(self) -> bytes | None:
        """Return the open batch as one envelope (None when empty) and start a new one."""
        if not self._items:
            return None
        body = batch_envelope(self._items)
        self._items, self._bytes = [], BATCH_OVERHEAD_BYTES
        return body

    def __len__(self) -> int:
        return len(self._items)


def pack_batches(items: Iterable[bytes], max_bytes: int) -> list[bytes]:
    """Pack encoded objects, in order, into as few batch envelopes of at most `max_bytes` as possible."""
    packer = BatchPacker(max_bytes)
    batches = [full for item in items if (full := packer.add(item)) is not None]
    last = packer.take()
    if last is not None:
        batches.append(last)
    return batches


@dataclass(frozen=True, slots=True)
class PredictionInfo:
    """What the inference module predicted for a reading, and with which model."""

    value: float
    model: ModelKind
    model_version: str
    fallback_reason: str | None = None

    def __post_init__(self) -> None:
        value = _number(self.value, "prediction value")  # also turns numpy scalars into float
        if value is not self.value:
            object.__setattr__(self, "value", value)
        if self.model not in MODEL_KINDS:
            _fail(WRONG_TYPE, f"model must be one of {', '.join(sorted(MODEL_KINDS))}, got {_short(self.model)}")
        if type(self.model_version) is not str or not self.model_version:
            _fail(WRONG_TYPE, f"model_version must be a non-empty string, got {_short(self.model_version)}")
        # Same rule as the bundle's routing: a device model needs no excuse, the fleet model does.
        if self.model == "device" and self.fallback_reason is not None:
            _fail(WRONG_TYPE, f"a device-model prediction has no fallback_reason, got {self.fallback_reason!r}")
        if self.model == "fleet" and (type(self.fallback_reason) is not str or not self.fallback_reason):
            _fail(WRONG_TYPE, "a fleet-model prediction needs a fallback_reason (e.g. 'no_model')")

    def to_json_obj(self) -> dict[str, Any]:
        """Return the `prediction` object of the Prediction contract."""
        return {
            "value": self.value,
            "model": self.model,
            "model_version": self.model_version,
            "fallback_reason": self.fallback_reason,
        }


@dataclass(frozen=True, slots=True)
class EdgeInfo:
    """Where and when the edge handled a reading; `latency_ms` is receipt to prediction."""

    edge_device: str
    received_ts: datetime
    latency_ms: float

    def __post_init__(self) -> None:
        _check_name(self.edge_device, "edge_device", MAX_DEVICE_ID_CHARS, BAD_DEVICE_ID)
        received_ts = _utc(self.received_ts, "received_ts")
        if received_ts is not self.received_ts:
            object.__setattr__(self, "received_ts", received_ts)
        latency_ms = _number(self.latency_ms, "latency_ms")
        if latency_ms is not self.latency_ms:
            object.__setattr__(self, "latency_ms", latency_ms)

    def to_json_obj(self) -> dict[str, Any]:
        """Return the `edge` object of the Prediction contract."""
        return {
            "edge_device": self.edge_device,
            "received_ts": format_ts(self.received_ts),
            "latency_ms": self.latency_ms,
        }


def prediction_json_obj(reading: Reading, prediction: PredictionInfo, edge: EdgeInfo) -> dict[str, Any]:
    """Return the Prediction message: the telemetry object plus `prediction` and `edge`."""
    obj = reading.to_json_obj()
    obj.pop("received_ts", None)  # `edge.received_ts` carries it: no need to pay for it twice upstream
    obj["prediction"] = prediction.to_json_obj()
    obj["edge"] = edge.to_json_obj()
    return obj


def payload_text(raw: bytes, max_bytes: int = DEADLETTER_PAYLOAD_BYTES) -> str:
    """Return the start of a raw payload as text whose UTF-8 form is at most `max_bytes`."""
    text = bytes(raw[:max_bytes]).decode("utf-8", errors="replace")
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        # Each undecodable byte became a 3-byte U+FFFD: trim again, on a character boundary.
        text = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return text


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the edge could not use, with the reason, kept for inspection."""

    reason: str
    detail: str
    source: str  # "<module>/<input>", e.g. "inference/telemetry"
    payload: str

    @classmethod
    def from_error(cls, err: MessageError, source: str, raw: bytes) -> DeadLetter:
        """Build a dead letter for a whole payload that failed to decode."""
        return cls(err.reason, err.detail[:DEADLETTER_DETAIL_CHARS], source, payload_text(raw))

    @classmethod
    def from_item(cls, err: MessageError, source: str, item: object) -> DeadLetter:
        """Build a dead letter for one bad reading from `decode_payload`'s error list."""
        try:
            # ensure_ascii escapes lone surrogates, which UTF-8 cannot carry.
            raw = json.dumps(item, separators=(",", ":")).encode("ascii")
        except (ValueError, TypeError, RecursionError):
            raw = _short(item, DEADLETTER_PAYLOAD_BYTES).encode("ascii", errors="backslashreplace")
        return cls.from_error(err, source, raw)

    def to_json_obj(self) -> dict[str, Any]:
        """Return the dead-letter message."""
        return {
            "schema": DEADLETTER_SCHEMA,
            "reason": self.reason,
            "detail": self.detail,
            "source": self.source,
            "payload": self.payload,
        }


def units_4kb(n_bytes: int) -> int:
    """Return how many 4 KB units IoT Hub bills for one message of `n_bytes`."""
    return max(1, math.ceil(n_bytes / UNIT_BYTES))


def iot_hub_message_bytes(body: bytes, properties: Mapping[str, str], system_properties: Mapping[str, str]) -> int:
    """Return a message's size as IoT Hub meters it: body, system property values, application names and values.

    Azure's rule ("Create and read IoT Hub messages", section Message size,
    learn.microsoft.com/azure/iot-hub/iot-hub-devguide-messages-construct#message-size): the size
    in bytes is the body size, plus the size of all the values of the message system properties,
    plus the size of all user (application) property names and values. Only what the sender set
    counts: the connection identities IoT Hub stamps on arrival are not in `system_properties`.
    """
    system = sum(len(str(value).encode("utf-8")) for value in system_properties.values())
    application = sum(len(name.encode("utf-8")) + len(str(value).encode("utf-8")) for name, value in properties.items())
    return len(body) + system + application
