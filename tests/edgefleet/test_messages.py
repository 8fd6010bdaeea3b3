import itertools
import json
import math
import pickle
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgefleet.messages import (
    BAD_DEVICE_ID,
    BAD_FEATURE_NAME,
    BAD_SEQ,
    BAD_TIMESTAMP,
    BATCH_OVERHEAD_BYTES,
    BATCH_SCHEMA,
    DEADLETTER_SCHEMA,
    DEVICE_MISMATCH,
    EDGE_REASONS,
    EMPTY_BATCH,
    MISSING_FIELD,
    NO_FEATURES,
    NON_FINITE,
    NOT_JSON,
    NOT_OBJECT,
    NOT_UTF8,
    OVERSIZE,
    PROCESSING_REASONS,
    REASONS,
    TELEMETRY_SCHEMA,
    WRONG_SCHEMA,
    WRONG_TYPE,
    BatchPacker,
    DeadLetter,
    EdgeInfo,
    MessageError,
    PredictionInfo,
    Reading,
    batch_envelope,
    decode_payload,
    encode_json,
    pack_batches,
    parse_reading,
    prediction_json_obj,
)

pytestmark = pytest.mark.fast


def telemetry(**overrides):
    obj = {
        "schema": TELEMETRY_SCHEMA,
        "device_id": "dev-0001",
        "seq": 7,
        "ts": "2026-11-01T12:00:00Z",
        "features": {"temperature_c": 21.5, "humidity_pct": 40.0},
        "label": 3.25,
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not DROP}


DROP = object()


def payload(obj):
    return json.dumps(obj).encode()


def batch(*objs):
    return {"schema": BATCH_SCHEMA, "readings": list(objs)}


def reason_of(raw, max_bytes=256 * 1024):
    """Return the reason a payload is refused, whether raised or reported for its one reading."""
    try:
        readings, errors = decode_payload(raw, max_bytes)
    except MessageError as err:
        return err.reason
    assert readings == [] and len(errors) == 1
    return errors[0][0].reason


def test_reading_round_trips_through_json_bytes():
    reading = parse_reading(telemetry())
    [again], errors = decode_payload(encode_json(reading.to_json_obj()))
    assert errors == []
    assert again == reading
    assert reading.to_json_obj() == telemetry()
    assert hash(again) == hash(reading)


def test_reading_without_label_round_trips_without_a_label_key():
    reading = parse_reading(telemetry(label=DROP))
    assert reading.label is None
    assert "label" not in reading.to_json_obj()
    assert parse_reading(reading.to_json_obj()) == reading


def test_null_label_reads_as_absent():
    assert parse_reading(telemetry(label=None)).label is None


def test_ts_is_written_with_z_and_microseconds_only_when_non_zero():
    whole = parse_reading(telemetry(ts="2026-11-01T12:00:00+00:00"))
    fraction = parse_reading(telemetry(ts="2026-11-01T12:00:00.250Z"))
    assert whole.to_json_obj()["ts"] == "2026-11-01T12:00:00Z"
    assert fraction.to_json_obj()["ts"] == "2026-11-01T12:00:00.250000Z"


def test_offset_timestamp_is_normalised_to_utc():
    reading = parse_reading(telemetry(ts="2026-11-01T14:30:00+02:30"))
    assert reading.ts == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert reading.ts.tzinfo is UTC
    direct = Reading("d", 0, datetime(2026, 11, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5))), (("x", 1.0),))
    assert direct.ts == datetime(2026, 11, 1, 12, 0, tzinfo=UTC) and direct.ts.tzinfo is UTC


@pytest.mark.parametrize("ts", ["2026-11-01T12:00:00", "2026-11-01"])
def test_naive_timestamp_is_rejected(ts):
    with pytest.raises(MessageError) as caught:
        parse_reading(telemetry(ts=ts))
    assert caught.value.reason == BAD_TIMESTAMP
    assert "timezone" in caught.value.detail


def test_naive_datetime_is_rejected_when_a_reading_is_built_directly():
    with pytest.raises(MessageError, match=BAD_TIMESTAMP):
        Reading("d", 0, datetime(2026, 11, 1), (("x", 1.0),))


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z", "2262-01-01T00:00:00Z", 1e9])
def test_timestamps_the_lake_cannot_hold_are_rejected(ts):
    with pytest.raises(MessageError) as caught:
        parse_reading(telemetry(ts=ts))
    assert caught.value.reason in {BAD_TIMESTAMP, WRONG_TYPE}


REALISTIC_BAD_PAYLOADS = {
    NOT_UTF8: '{"schema": "edgefleet.telemetry/1", "device_id": "café-7"}'.encode("latin-1"),
    NOT_JSON: payload(telemetry())[:40],
    NOT_OBJECT: payload([telemetry(), telemetry(seq=8)]),  # a bare array is not the batch envelope
    WRONG_SCHEMA: payload(telemetry(schema="edgefleet.telemetry/2")),
    MISSING_FIELD: payload(telemetry(ts=DROP)),
    WRONG_TYPE: payload(telemetry(seq="17")),
    NON_FINITE: payload(telemetry(features={"temperature_c": float("nan")})),  # json.dumps writes NaN
    BAD_TIMESTAMP: payload(telemetry(ts="2026-13-01T00:00:00Z")),
    BAD_DEVICE_ID: payload(telemetry(device_id="dev-1\r\n")),
    BAD_SEQ: payload(telemetry(seq=-1)),
    BAD_FEATURE_NAME: payload(telemetry(features={"label": 2.0})),
    NO_FEATURES: payload(telemetry(features={})),
    OVERSIZE: payload(batch(*[telemetry(seq=i) for i in range(3000)])),
    EMPTY_BATCH: payload(batch()),
}


@pytest.mark.parametrize("reason", sorted(REALISTIC_BAD_PAYLOADS))
def test_each_reason_code_is_triggered_by_a_realistic_bad_input(reason):
    assert reason_of(REALISTIC_BAD_PAYLOADS[reason]) == reason


def test_every_reason_code_has_a_realistic_bad_input():
    assert set(REALISTIC_BAD_PAYLOADS) == REASONS - PROCESSING_REASONS


def test_reasons_for_valid_readings_the_edge_could_not_answer_are_dead_letter_reasons_too():
    assert {"prediction_failed", "internal_error"} == PROCESSING_REASONS
    assert PROCESSING_REASONS <= REASONS


def test_the_edges_own_reason_codes_are_apart_from_the_contracts():
    # decode_payload never gives these: they judge a well-formed reading against its context.
    assert DEVICE_MISMATCH in EDGE_REASONS and not EDGE_REASONS & REASONS


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_json_constants_are_refused_anywhere_in_the_payload(constant):
    raw = payload(telemetry()).replace(b'"seq": 7', f'"seq": 7, "extra": [{constant}]'.encode())
    with pytest.raises(MessageError) as caught:
        decode_payload(raw)
    assert caught.value.reason == NON_FINITE


@pytest.mark.parametrize(
    "overrides",
    [
        {"features": {"temperature_c": 1e400}},  # json reads it as inf
        {"features": {"temperature_c": 10**400}},  # an int no float can hold
        {"label": -1e999},
    ],
)
def test_overflowing_numbers_are_rejected_as_non_finite(overrides):
    raw = json.dumps(telemetry(**overrides)).replace("Infinity", "1e999").encode()
    assert reason_of(raw) == NON_FINITE


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_when_a_reading_is_built_directly(value):
    ts = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(MessageError, match=NON_FINITE):
        Reading("d", 0, ts, (("x", value),))
    with pytest.raises(MessageError, match=NON_FINITE):
        Reading("d", 0, ts, (("x", 1.0),), label=value)


@pytest.mark.parametrize(
    "overrides", [{"features": {"temperature_c": True}}, {"label": False}, {"seq": True}, {"device_id": True}]
)
def test_bool_is_not_accepted_as_a_number(overrides):
    assert reason_of(payload(telemetry(**overrides))) == WRONG_TYPE


def test_integer_feature_values_become_floats():
    reading = parse_reading(telemetry(features={"temperature_c": 21}, label=3))
    assert reading.features == (("temperature_c", 21.0),)
    assert type(reading.features[0][1]) is float and type(reading.label) is float


@pytest.mark.parametrize("device_id", ["", "x" * 129, "dev\x00", " dev-1", "dev-\u200b1", "dev-\ud800"])
def test_unusable_device_ids_are_rejected(device_id):
    assert reason_of(payload(telemetry(device_id=device_id))) == BAD_DEVICE_ID


@pytest.mark.parametrize("name", ["", "edge_latency", "prediction_value", "_hidden", "ts", "a\tb", "n" * 129])
def test_feature_names_that_would_break_the_lake_are_rejected(name):
    assert reason_of(payload(telemetry(features={name: 1.0}))) == BAD_FEATURE_NAME


def test_seq_beyond_int64_is_rejected():
    assert reason_of(payload(telemetry(seq=2**63))) == BAD_SEQ


def test_too_many_features_is_oversize():
    assert reason_of(payload(telemetry(features={f"f{i}": 1.0 for i in range(257)}))) == OVERSIZE


def test_extra_top_level_keys_are_ignored_so_a_prediction_reads_back_as_its_reading():
    reading = parse_reading(telemetry())
    prediction = prediction_json_obj(
        reading,
        PredictionInfo(1.5, "device", "v1"),
        EdgeInfo("edge1", datetime(2026, 11, 1, 12, 0, 1, tzinfo=UTC), 2.5),
    )
    assert parse_reading(prediction) == reading
    assert parse_reading(telemetry(firmware="1.2.3")) == reading


def test_batch_with_one_bad_reading_keeps_the_good_ones():
    bad = telemetry(seq=2, features={"temperature_c": "hot"})
    readings, errors = decode_payload(payload(batch(telemetry(seq=1), bad, telemetry(seq=3))))
    assert [r.seq for r in readings] == [1, 3]
    [(err, item)] = errors
    assert err.reason == WRONG_TYPE and "temperature_c" in err.detail
    assert item == bad


def test_single_bad_telemetry_object_is_reported_like_a_bad_batch_item():
    bad = telemetry(seq=-5)
    readings, errors = decode_payload(payload(bad))
    assert readings == []
    assert [(err.reason, item) for err, item in errors] == [(BAD_SEQ, bad)]


@pytest.mark.parametrize("envelope", [{"schema": BATCH_SCHEMA}, {"schema": BATCH_SCHEMA, "readings": {"a": 1}}])
def test_broken_batch_envelope_is_refused_as_a_whole(envelope):
    with pytest.raises(MessageError) as caught:
        decode_payload(payload(envelope))
    assert caught.value.reason in {MISSING_FIELD, WRONG_TYPE}


def test_byte_order_mark_is_tolerated():
    [reading], _ = decode_payload(b"\xef\xbb\xbf" + payload(telemetry()))
    assert reading.seq == 7


def test_pack_batches_respects_max_bytes_and_preserves_order_and_count():
    rng = random.Random(5)
    objs = [
        telemetry(
            seq=i, device_id=f"dév-{i % 7}-€", features={f"f{j}": rng.uniform(-1e6, 1e6) for j in range(1 + i % 9)}
        )
        for i in range(400)
    ]
    max_bytes = 4096
    batches = pack_batches([encode_json(obj) for obj in objs], max_bytes)
    assert all(len(b) <= max_bytes for b in batches)
    decoded = []
    for raw in batches:
        readings, errors = decode_payload(raw, max_bytes)
        assert errors == []
        decoded.extend(r.to_json_obj() for r in readings)
    assert decoded == objs
    # As few as possible: no batch's first item would have fitted into the batch before it.
    for before, after in itertools.pairwise(batches):
        first_item = encode_json(json.loads(after)["readings"][0])
        assert len(before) + 1 + len(first_item) > max_bytes


def test_pack_batches_of_nothing_is_no_batches():
    assert pack_batches([], 1024) == []


def test_object_larger_than_max_bytes_gets_a_batch_of_its_own_between_its_neighbours():
    small, big = (
        encode_json(telemetry()),
        encode_json(telemetry(features={f"feature_{i}": float(i) for i in range(100)})),
    )
    batches = pack_batches([small, big, small], 1024)
    assert [len(json.loads(batch)["readings"]) for batch in batches] == [1, 1, 1]
    assert len(batches[1]) == BATCH_OVERHEAD_BYTES + len(big) > 1024


def test_batch_packer_hands_out_the_full_batch_when_the_next_object_does_not_fit():
    item = encode_json(telemetry())
    packer = BatchPacker(BATCH_OVERHEAD_BYTES + 2 * len(item) + 1)  # exactly two objects and their comma
    assert packer.add(item) is None and packer.add(item) is None
    full = packer.add(item)
    assert full == batch_envelope([item, item]) and len(packer) == 1
    assert packer.take() == batch_envelope([item]) and packer.take() is None


def test_encoding_refuses_nan_instead_of_writing_invalid_json():
    with pytest.raises(MessageError, match=NON_FINITE):
        encode_json(telemetry(label=math.nan))


def test_prediction_message_is_the_telemetry_object_plus_prediction_and_edge():
    reading = parse_reading(telemetry())
    received = datetime(2026, 11, 1, 13, 0, 0, 500, tzinfo=timezone(timedelta(hours=1)))
    obj = prediction_json_obj(
        reading, PredictionInfo(4.5, "fleet", "20261101-abc", "poor_model"), EdgeInfo("edge1", received, 1.25)
    )
    assert obj == {
        **telemetry(),
        "prediction": {
            "value": 4.5,
            "model": "fleet",
            "model_version": "20261101-abc",
            "fallback_reason": "poor_model",
        },
        "edge": {"edge_device": "edge1", "received_ts": "2026-11-01T12:00:00.000500Z", "latency_ms": 1.25},
    }
    assert json.loads(encode_json(obj)) == obj


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((math.nan, "device", "v1", None), NON_FINITE),
        ((1.0, "device", "v1", "no_model"), WRONG_TYPE),
        ((1.0, "fleet", "v1", None), WRONG_TYPE),
        ((1.0, "cloud", "v1", None), WRONG_TYPE),
        ((True, "device", "v1", None), WRONG_TYPE),
    ],
)
def test_prediction_info_refuses_values_the_contract_cannot_carry(args, reason):
    with pytest.raises(MessageError) as caught:
        PredictionInfo(*args)
    assert caught.value.reason == reason


def test_deadletter_payload_is_truncated_to_4096_bytes_of_text():
    raw = b"x" * 4095 + "é".encode() + b"tail"  # the cut falls inside a two-byte character
    letter = DeadLetter.from_error(MessageError(OVERSIZE, "too big"), "inference/telemetry", raw)
    assert letter.payload.startswith("x" * 4095)
    assert len(letter.payload.encode()) <= 4096
    assert letter.to_json_obj() == {
        "schema": DEADLETTER_SCHEMA,
        "reason": OVERSIZE,
        "detail": "too big",
        "source": "inference/telemetry",
        "payload": letter.payload,
    }


def test_deadletter_payload_replaces_undecodable_bytes_and_stays_within_4096_bytes():
    letter = DeadLetter.from_error(MessageError(NOT_UTF8, "x"), "sensor/field", bytes(range(128, 256)) * 64)
    assert set(letter.payload) == {"\ufffd"}
    assert len(letter.payload.encode()) <= 4096
    json.loads(encode_json(letter.to_json_obj()))


def test_deadletter_from_item_keeps_the_bad_reading_as_json():
    bad = telemetry(device_id="dev-\ud800")  # a lone surrogate, as a JSON escape can produce
    [(err, item)] = decode_payload(payload(batch(bad)))[1]
    letter = DeadLetter.from_item(err, "inference/telemetry", item)
    assert letter.reason == BAD_DEVICE_ID
    assert json.loads(letter.payload) == bad
    encode_json(letter.to_json_obj())


def test_message_error_survives_pickling_and_reads_well():
    err = pickle.loads(pickle.dumps(MessageError(BAD_SEQ, "seq must be >= 0")))
    assert (err.reason, err.detail, str(err)) == (BAD_SEQ, "seq must be >= 0", "bad_seq: seq must be >= 0")


def test_feature_lookup_and_model_input_vector():
    reading = parse_reading(telemetry())
    assert reading.feature("humidity_pct") == 40.0
    assert reading.feature("pressure_hpa") is None
    values = reading.feature_values(["humidity_pct", "pressure_hpa", "temperature_c"])
    assert values[0] == 40.0 and math.isnan(values[1]) and values[2] == 21.5


def test_reading_is_frozen():
    reading = parse_reading(telemetry())
    with pytest.raises(AttributeError):
        reading.seq = 8  # type: ignore[misc]


def test_duplicate_feature_names_are_rejected_when_a_reading_is_built_directly():
    with pytest.raises(MessageError, match=WRONG_TYPE):
        Reading("d", 0, datetime(2026, 11, 1, tzinfo=UTC), (("x", 1.0), ("x", 2.0)))


JUNK_VALUES = [
    None,
    True,
    0,
    -1,
    1.5,
    -0.0,
    1e308,
    10**30,
    "",
    "x",
    "\x00",
    "\ud800",
    "𝔡𝔢𝔳",
    "x" * 300,
    [],
    [1, 2],
    {},
    {"a": 1},
    {"a": {"b": [None]}},
]
JUNK_TEXT = ["NaN", "Infinity", "-Infinity", "1e999999", "-" + "9" * 5000, "1" * 4400, '"\\ud800"', '"\\u0000"', "nul"]


def unicode_junk(rng):
    return "".join(chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0x110000)])) for _ in range(8))


def malformed_payload(rng):
    """Return one malformed (or occasionally valid) payload, as a device or a bug would send it."""
    kind = rng.randrange(10)
    good = telemetry(seq=rng.randrange(100), features={"a": rng.random(), "b": rng.random()})
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        raw = payload(batch(good, telemetry(seq=1)))
        return raw[: rng.randrange(len(raw))]
    if kind == 2:
        field = rng.choice([*good, "features.a", "label"])
        if "." in field:
            good["features"]["a"] = rng.choice(JUNK_VALUES)
        else:
            good[field] = rng.choice([*JUNK_VALUES, DROP])
        good = {k: v for k, v in good.items() if v is not DROP}
        return payload(rng.choice([good, batch(good, telemetry())]))
    if kind == 3:
        depth = rng.choice([10, 900, 1500, 100_000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        inner = opener * depth + "1" + closer * depth
        if rng.random() < 0.5:
            good["features"]["a"] = "@deep@"
        else:
            good["deep"] = "@deep@"  # an extra key: ignored, but the decoder still walks it
        return payload(good).replace(b'"@deep@"', inner.encode())
    if kind == 4:
        text = payload(good).decode()
        return text.replace(str(good["seq"]), rng.choice(JUNK_TEXT), 1).encode()
    if kind == 5:
        where = rng.choice(["device_id", "ts", "feature"])
        junk = unicode_junk(rng)
        if where == "feature":
            good["features"] = {junk: 1.0}
        else:
            good[where] = junk
        return json.dumps(good, ensure_ascii=rng.random() < 0.5).encode("utf-8", errors="surrogatepass")
    if kind == 6:
        raw = bytearray(payload(batch(good, telemetry())))
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 7:
        return payload(rng.choice(JUNK_VALUES))
    if kind == 8:
        return payload(batch(*[rng.choice([good, rng.choice(JUNK_VALUES), telemetry(seq=-1)]) for _ in range(5)]))
    return rng.choice([b"", b"\xef\xbb\xbf", b"{}", b"null", b" " * 5000, payload(good) * 2])


def test_fuzzed_payloads_parse_or_raise_message_error_with_a_known_reason():
    rng = random.Random(20261101)
    outcomes = {"parsed": 0, "raised": 0, "reported": 0}
    for _ in range(2000):
        raw = malformed_payload(rng)
        try:
            readings, errors = decode_payload(raw, max_bytes=rng.choice([4096, 1 << 20]))
        except MessageError as err:
            assert err.reason in REASONS, (err, raw[:200])
            encode_json(DeadLetter.from_error(err, "inference/telemetry", raw).to_json_obj())
            outcomes["raised"] += 1
            continue
        for err, item in errors:
            assert err.reason in REASONS, (err, item)
            encode_json(DeadLetter.from_item(err, "inference/telemetry", item).to_json_obj())
        for reading in readings:
            # Whatever parses must be writable again and read back the same.
            assert parse_reading(json.loads(encode_json(reading.to_json_obj()))) == reading
        outcomes["parsed"] += len(readings)
        outcomes["reported"] += len(errors)
    assert min(outcomes.values()) > 100, outcomes


def test_iot_hub_sizes_a_message_as_body_plus_system_values_plus_application_names_and_values() -> None:
    from edgefleet.messages import iot_hub_message_bytes, units_4kb

    size = iot_hub_message_bytes(b"x" * 4000, {"alert": "drift"}, {"contentType": "application/json"})

    assert size == 4000 + len("application/json") + len("alert") + len("drift")
    assert units_4kb(size) == 1 and units_4kb(size + 75) == 2
