"""The upstream envelope: gzip bodies declared in contentEncoding, opened the same way by every reader."""

from __future__ import annotations

import gzip
import json

import pytest

from edgefleet.envelope import BAD_ENCODING, GZIP, PLAIN, compress_body, content_encoding, open_body
from edgefleet.messages import batch_envelope, decode_payload
from edgefleet.routes import Message, parse_route

pytestmark = pytest.mark.fast


def prediction(seq: int) -> bytes:
    return json.dumps(
        {
            "schema": "edgefleet.telemetry/1",
            "device_id": f"dev-{seq % 7:05d}",
            "seq": seq,
            "ts": "2026-12-06T10:00:00Z",
            "features": {"temperature_c": 21.5 + seq / 10, "load_pct": 55.0},
            "prediction": {"value": 120.25, "model": "device", "model_version": "v1", "fallback_reason": None},
            "edge": {"edge_device": "edge1", "received_ts": "2026-12-06T10:00:00.010Z", "latency_ms": 3.5},
        },
        separators=(",", ":"),
    ).encode()


BATCH = batch_envelope([prediction(seq) for seq in range(50)])


def test_a_batch_round_trips_through_gzip_and_opens_to_the_same_bytes() -> None:
    body, encoding = compress_body(BATCH)

    assert encoding == GZIP
    assert len(body) * 4 < len(BATCH)  # JSON predictions compress well
    assert open_body(body, {"contentType": "application/json", "contentEncoding": encoding}) == BATCH
    readings, errors = decode_payload(open_body(body, {"contentEncoding": encoding}))
    assert [r.seq for r in readings] == list(range(50)) and errors == []


def test_a_plain_body_from_before_compression_opens_as_it_is() -> None:
    assert open_body(BATCH, {"contentType": "application/json", "contentEncoding": "utf-8"}) == BATCH
    assert open_body(BATCH, {}) == BATCH  # no contentEncoding at all: an old lake message


def test_the_encoding_property_name_and_value_match_in_any_case() -> None:
    body, _ = compress_body(BATCH)

    assert content_encoding({"ContentEncoding": " GZIP "}) == "gzip"
    assert open_body(body, {"CONTENTENCODING": "Gzip"}) == BATCH


def test_a_body_gzip_would_not_shrink_goes_plain() -> None:
    assert compress_body(b"{}") == (b"{}", PLAIN)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not gzip at all", "corrupt"),
        (gzip.compress(BATCH)[:-20], "truncated"),
        (gzip.compress(BATCH) + b"junk", "follow the gzip body"),
        (gzip.compress(BATCH)[:10] + bytes(200) + gzip.compress(BATCH)[210:], "corrupt"),
    ],
    ids=["not-gzip", "truncated", "trailing-bytes", "damaged-middle"],
)
def test_a_corrupt_gzip_body_is_refused_with_a_reason(body: bytes, problem: str) -> None:
    with pytest.raises(Exception) as caught:
        open_body(body, {"contentEncoding": "gzip"})

    assert getattr(caught.value, "reason", None) == BAD_ENCODING
    assert problem in str(caught.value)


def test_a_body_that_opens_too_big_is_refused_not_expanded() -> None:
    bomb = gzip.compress(bytes(10_000_000))  # 10 MB of zeros in ~10 KB

    with pytest.raises(Exception) as caught:
        open_body(bomb, {"contentEncoding": "gzip"}, max_bytes=1_000_000)

    assert getattr(caught.value, "reason", None) == BAD_ENCODING
    assert "more than 1000000 bytes" in str(caught.value)


def test_an_unknown_encoding_is_refused_naming_it() -> None:
    with pytest.raises(Exception) as caught:
        open_body(BATCH, {"contentEncoding": "br"})

    assert getattr(caught.value, "reason", None) == BAD_ENCODING
    assert "'br'" in str(caught.value)


def test_routes_cannot_query_a_compressed_body_but_can_query_its_application_properties() -> None:
    body, encoding = compress_body(BATCH)
    compressed = Message(
        "edge1",
        "inference",
        "predictions",
        {"schema": "edgefleet.batch/1"},
        {"contentType": "application/json", "contentEncoding": encoding},
        body,
    )
    plain = Message(
        "edge1",
        "inference",
        "predictions",
        {"schema": "edgefleet.batch/1"},
        {"contentType": "application/json", "contentEncoding": "utf-8"},
        BATCH,
    )
    by_body = parse_route("r", "FROM /* WHERE $body.schema = 'edgefleet.batch/1' INTO $upstream")
    by_property = parse_route("r", "FROM /* WHERE schema = 'edgefleet.batch/1' INTO $upstream")

    assert by_body.matches(plain)
    assert not by_body.matches(compressed)  # $body is undefined for a gzip body, as in IoT Hub
    assert by_property.matches(compressed)
