"""The readings' fast path (msgspec, settled names) decides exactly as the stdlib path does."""

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgefleet import messages
from edgefleet.messages import (
    BAD_TIMESTAMP,
    BATCH_SCHEMA,
    TELEMETRY_SCHEMA,
    MessageError,
    Reading,
    decode_payload,
    encode_json,
    encode_reading,
    parse_reading,
)
from tests.edgefleet.test_messages import DROP, batch, malformed_payload, payload, telemetry

pytestmark = pytest.mark.fast

NOW = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


def outcome(decode, raw, max_bytes):
    """Return what decoding `raw` gave, in comparable form: the readings and errors, or the raised error."""
    try:
        readings, errors = decode(raw, max_bytes)
    except MessageError as err:
        return ("raised", err.reason, err.detail)
    return ("decoded", readings, [(err.reason, err.detail, repr(item)) for err, item in errors])


def test_fuzzed_and_valid_payloads_decode_as_the_stdlib_path_decodes_them():
    rng = random.Random(20261206)
    fast_hits = 0
    for index in range(3000):
        if index % 3 == 0:
            raw = payload(telemetry(seq=index, features={"temperature_c": rng.gauss(20, 7), "load_pct": 50.0}))
        else:
            raw = malformed_payload(rng)
        max_bytes = rng.choice([4096, 1 << 20])
        expected = outcome(messages._decode_payload_stdlib, raw, max_bytes)
        assert outcome(decode_payload, raw, max_bytes) == expected, raw[:200]
        fast_hits += len(raw) <= max_bytes and messages._decode_fast(raw) is not None
    assert fast_hits >= 900


@pytest.mark.parametrize(
    "overrides",
    [
        {"features": {"temperature_c": 21, "humidity_pct": 40.0}},  # an int value becomes a float
        {"ts": "2026-11-01T13:00:00+01:00"},  # an offset is normalised to UTC
        {"ts": "2026-11-01T12:00:00"},  # naive: rejected
        {"received_ts": "2026-11-01T12:00:01.5Z"},
        {"received_ts": None, "label": None},
        {"label": 2},
        {"label": True},
        {"seq": True},
        {"seq": -1},
        {"seq": 2**63},
        {"device_id": "dev-1 "},
        {"device_id": ""},
        {"features": {}},
        {"features": {"seq": 1.0}},
        {"features": {"a": 1e308, "b": 1e308}},  # finite values whose sum overflows
        {"schema": "edgefleet.telemetry/2"},
        {"extra": [[[1]]]},
        {"ts": DROP},
        {"ts": 1},
        {"received_ts": 1.5},
        {"features": {"a": True}},
        {"features": {"a": 1e400}},
        {"features": {"a": 10**400}},
        {"features": {"a": 10**300}},
        {"features": {"_a": 1.0}},
        {"seq": 1.0},
        {"label": 1e400},
    ],
)
def test_unusual_readings_decode_as_the_stdlib_path_decodes_them(overrides):
    for raw in (payload(telemetry(**overrides)), payload(batch(telemetry(), telemetry(**overrides)))):
        assert outcome(decode_payload, raw, 1 << 20) == outcome(messages._decode_payload_stdlib, raw, 1 << 20)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"schema":"edgefleet.batch/1","readings":[{"schema":"edgefleet.telemetry/1"}],"schema":"x"}',
        b'{"schema":"x","readings":[]}',
        b'{"schema":"edgefleet.other/1","readings":[' + payload(telemetry()) + b"]}",
        b'{"schema":"edgefleet.batch/1","readings":[]}',
        b'{"schema":"edgefleet.batch/1","readings":{}}',
        payload(telemetry())[:-1] + b',"device_id":"dev-2","seq":9}',  # duplicate keys: the last one counts
        payload(telemetry())[:-1] + b',"schema":"edgefleet.batch/1"}',
        b'{"schema":"edgefleet.batch/1","readings":[' + payload(telemetry()) + b"]," + b'"schema":"edgefleet.batch/1"}',
        b"\xef\xbb\xbf" + payload(telemetry()),
    ],
)
def test_odd_envelopes_decode_as_the_stdlib_path_decodes_them(raw):
    assert outcome(decode_payload, raw, 1 << 20) == outcome(messages._decode_payload_stdlib, raw, 1 << 20)


def test_usual_readings_and_sensor_batches_never_reach_the_stdlib_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the stdlib path was taken")

    monkeypatch.setattr(messages, "_decode_payload_stdlib", refuse)
    stamped = telemetry(seq=8, received_ts="2026-11-01T12:00:00.25Z")
    readings, errors = decode_payload(payload(telemetry()))
    batch_readings, batch_errors = decode_payload(payload({"schema": BATCH_SCHEMA, "readings": [stamped] * 3}))

    assert errors == batch_errors == []
    assert readings == [parse_reading(telemetry())]
    assert batch_readings == [parse_reading(stamped)] * 3


def test_a_batch_with_keys_beside_its_own_takes_the_stdlib_path(monkeypatch):
    taken = []
    stdlib = messages._decode_payload_stdlib
    monkeypatch.setattr(messages, "_decode_payload_stdlib", lambda *args: taken.append(1) or stdlib(*args))

    readings, errors = decode_payload(payload({"schema": BATCH_SCHEMA, "readings": [telemetry()], "x": [[1]]}))

    assert (readings, errors, taken) == ([parse_reading(telemetry())], [], [1])


def test_encode_reading_writes_what_encode_json_of_the_telemetry_object_means():
    reading = parse_reading(telemetry(features={"temperature_c": 1e16, "humidity_pct": 1e-05, "é_ü": -0.0}))
    stamped = reading.stamped(NOW)

    body = encode_reading(stamped)

    assert json.loads(body) == json.loads(encode_json(stamped.to_json_obj()))
    assert parse_reading(json.loads(body)) == stamped
    assert json.loads(body)["schema"] == TELEMETRY_SCHEMA


@pytest.mark.parametrize("overrides", [{}, {"label": DROP}, {"received_ts": "2026-11-01T12:00:00.5Z"}])
def test_encode_reading_writes_the_same_bytes_as_encode_json_for_plain_floats(overrides):
    reading = parse_reading(telemetry(**overrides))

    assert encode_reading(reading) == encode_json(reading.to_json_obj())


def test_stamped_normalises_and_checks_the_receive_time_like_the_constructor():
    reading = parse_reading(telemetry())
    offset = NOW.astimezone(timezone(timedelta(hours=2)))

    same_but_received = Reading(reading.device_id, reading.seq, reading.ts, reading.features, reading.label, NOW)

    assert reading.stamped(offset) == same_but_received
    assert reading.stamped(offset).received_ts.tzinfo is UTC
    with pytest.raises(MessageError) as err:
        reading.stamped(NOW.replace(tzinfo=None))
    assert err.value.reason == BAD_TIMESTAMP
