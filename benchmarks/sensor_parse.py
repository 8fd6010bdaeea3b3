"""Measure the sensor's per-reading parse, validate, stamp and encode, and the inference module's batch decode.

The same realistic field payloads (the edge benchmark's readings, one per message, plus a share
of malformed ones: NaN, a bad device id, an int feature, an offset timestamp, not JSON, ...)
go through:

- today: the stdlib path as it was (`json` decode, `Reading` built and checked twice, once
  parsed and once stamped, `encode_json` of `to_json_obj()`);
- ours: `decode_payload` (msgspec decodes into a typed struct; the device id and feature order an
  earlier reading settled are not checked again; anything unusual takes the stdlib path),
  `Reading.stamped` (checks only the receive time) and `encode_reading` (a msgspec struct);

and, to show why these libraries, the candidates on the same valid readings: decoding with
stdlib json, orjson and msgspec; validating with pydantic (`model_validate_json`, a model of
the reading) against the hand-written checks; encoding with stdlib json, orjson and msgspec.
The whole sensor module runs both ways in-process too (its journal, batcher and outbox to the
tests' in-memory edgeHub, today's decode and encode swapped in for the first): what the module
itself spends per reading, without MQTT (paho, TLS and the IoT SDK, which
`benchmarks/edge_throughput.py` counts in the sensor process as well). The inference side
decodes the batches the sensor makes (`maxBatchBytes` 3900, the default before 32,000) both ways.

Each figure is the median over `--repeats` alternating runs of µs per reading (CPU time of this
process, the cyclic GC off during a run as in timeit); ratios are today / ours from the same
run. It prints a table, then one JSON object on the last line of stdout.

Usage:
    python benchmarks/sensor_parse.py --quick     # 5,000 payloads, 3 repeats (a few seconds)
    python benchmarks/sensor_parse.py             # 20,000 payloads, 7 repeats
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402
import pydantic  # noqa: E402

import modules.sensor.service as sensor_service  # noqa: E402
from benchmarks._edge_bench_util import reading_payload  # noqa: E402
from edgefleet import messages  # noqa: E402
from edgefleet.field import FIELD_TOPIC_FILTER  # noqa: E402
from edgefleet.messages import (  # noqa: E402
    DeadLetter,
    MessageError,
    Reading,
    decode_payload,
    encode_json,
    encode_reading,
    pack_batches,
)
from edgefleet.process import load_settings  # noqa: E402
from modules.sensor.settings import SensorSettings  # noqa: E402
from tests.modules.fakes import FakeModuleClient  # noqa: E402
from tests.modules.sensor.test_startup import StubFieldClient  # noqa: E402

try:  # a candidate only: not a dependency of the project
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None
    print("orjson is not installed: its figures are left out (pip install orjson to compare)", file=sys.stderr)

DEVICES = 50
MALFORMED_SHARE = 0.05
MAX_BATCH_BYTES = 3900  # maxBatchBytes when the README's figures were measured (the default is now 32,000)
SOURCE = "sensor/fleet/dev/telemetry"


def malformed(good: bytes, rng: random.Random) -> bytes:
    """Return one payload a field device might send by mistake (some still valid, just unusual)."""
    obj = json.loads(good)
    kind = rng.randrange(8)
    if kind == 0:
        return good.replace(b'"load_pct":', b'"load_pct":NaN,"x":', 1)
    if kind == 1:
        obj["device_id"] = obj["device_id"] + " "
    elif kind == 2:
        obj["features"]["load_pct"] = round(obj["features"]["load_pct"])  # an int: valid, converted
    elif kind == 3:
        obj["ts"] = obj["ts"].replace("Z", "+02:00")  # an offset: valid, normalised
    elif kind == 4:
        return good[: len(good) // 2]
    elif kind == 5:
        obj["seq"] = -1
    elif kind == 6:
        obj["features"] = {}
    else:
        obj["firmware"] = "1.2.3"  # an extra key: valid, ignored
    return json.dumps(obj, separators=(",", ":")).encode()


def make_payloads(count: int, seed: int = 20261206) -> list[bytes]:
    """Return `count` field payloads, about MALFORMED_SHARE of them malformed or unusual."""
    rng = random.Random(seed)
    payloads = []
    for index in range(count):
        good = reading_payload(f"dev-{index % DEVICES:03d}", 1 + index // DEVICES, rng)
        payloads.append(malformed(good, rng) if rng.random() < MALFORMED_SHARE else good)
    return payloads


def sensor_today(payload: bytes, received: datetime) -> list[bytes]:
    """Decode, check, stamp and encode one field payload as the sensor did before the fast path."""
    try:
        readings, errors = messages._decode_payload_stdlib(payload)
    except MessageError as err:
        return [encode_json(DeadLetter.from_error(err, SOURCE, payload).to_json_obj())]
    out = [encode_json(DeadLetter.from_item(err, SOURCE, item).to_json_obj()) for err, item in errors]
    for r in readings:
        stamped = Reading(r.device_id, r.seq, r.ts, r.features, r.label, received)  # checked all over again
        out.append(encode_json(stamped.to_json_obj()))
    return out


def sensor_ours(payload: bytes, received: datetime) -> list[bytes]:
    """Decode, check, stamp and encode one field payload as the sensor does now."""
    try:
        readings, errors = decode_payload(payload)
    except MessageError as err:
        return [encode_json(DeadLetter.from_error(err, SOURCE, payload).to_json_obj())]
    out = [encode_json(DeadLetter.from_item(err, SOURCE, item).to_json_obj()) for err, item in errors]
    out.extend(encode_reading(reading.stamped(received)) for reading in readings)
    return out


def encode_today(reading: Reading) -> bytes:
    """Encode a stamped reading as the sensor did: the stamped Reading checked all over again, then json."""
    again = Reading(reading.device_id, reading.seq, reading.ts, reading.features, reading.label, reading.received_ts)
    return encode_json(again.to_json_obj())


def sensor_module_cpu_us(payloads: list[bytes], today: bool) -> float:
    """Return the CPU µs per payload of the whole sensor module in-process: journal, batcher, outbox, in-memory edgeHub.

    `today` swaps the module's decode and encode for the stdlib path's; the rest is the module as it is.
    """
    desired = {
        "batchWindowMs": 200,
        "maxBatchBytes": MAX_BATCH_BYTES,
        "fieldTopic": FIELD_TOPIC_FILTER,
        "enabled": True,
    }
    # Each payload on its device's topic (make_payloads' round robin), so the device check passes.
    topics = [FIELD_TOPIC_FILTER.replace("+", f"dev-{index % DEVICES:03d}") for index in range(len(payloads))]
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(
            SensorSettings, field_mqtt_host="127.0.0.1", state_dir=Path(state), report_interval_s=60.0
        )
        service = sensor_service.SensorService(settings, FakeModuleClient(desired), field_client=StubFieldClient())
        assert service.start(threading.Event())
        swaps = {"decode_payload": messages._decode_payload_stdlib, "encode_reading": encode_today} if today else {}
        saved = {name: getattr(sensor_service, name) for name in swaps}
        for name, swap in swaps.items():
            setattr(sensor_service, name, swap)
        try:
            gc.collect()
            started = time.process_time()
            for topic, payload in zip(topics, payloads, strict=True):
                service.take_field_message(topic, payload)
            service.stop()
            elapsed = time.process_time() - started
        finally:
            for name, original in saved.items():
                setattr(sensor_service, name, original)
        forwarded = service.stats()["forwarded"]
    assert forwarded >= 0.9 * len(payloads), forwarded  # the readings went through, not to the dead letters
    return elapsed / len(payloads) * 1e6


class PydanticReading(pydantic.BaseModel):
    """The reading as a pydantic model (for the cost comparison only: not the contract's exact rules)."""

    model_config = pydantic.ConfigDict(frozen=True, strict=False)
    schema_: Literal["edgefleet.telemetry/1"] = pydantic.Field(alias="schema")
    device_id: str = pydantic.Field(min_length=1, max_length=128)
    seq: int = pydantic.Field(ge=0, le=2**63 - 1)
    ts: datetime
    features: dict[str, pydantic.FiniteFloat]
    label: pydantic.FiniteFloat | None = None
    received_ts: datetime | None = None


def cpu_us_per_item(work: Callable[[], object], items: int) -> float:
    """Return the CPU µs per item of one run of `work`, the cyclic GC off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        work()
        return (time.process_time() - started) / items * 1e6
    finally:
        gc.enable()


def measure(cases: dict[str, Callable[[], object]], items: int, repeats: int) -> dict[str, float]:
    """Return each case's median µs per item over `repeats` runs, the cases alternating within each run."""
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, work in cases.items():
            runs[name].append(cpu_us_per_item(work, items))
    return {name: round(statistics.median(values), 3) for name, values in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="5,000 payloads, 3 repeats")
    args = parser.parse_args()
    count, repeats = (5_000, 3) if args.quick else (args.payloads, args.repeats)
    payloads = make_payloads(count)
    received = datetime.now(UTC)

    # The two paths must agree before their costs mean anything.
    for payload in payloads:
        today, ours = sensor_today(payload, received), sensor_ours(payload, received)
        assert [json.loads(b) for b in today] == [json.loads(b) for b in ours], payload

    sensor = measure(
        {
            "today": lambda: [sensor_today(p, received) for p in payloads],
            "ours": lambda: [sensor_ours(p, received) for p in payloads],
        },
        count,
        repeats,
    )

    module_runs: dict[str, list[float]] = {"today": [], "ours": []}
    for _ in range(repeats):
        for name in module_runs:
            module_runs[name].append(sensor_module_cpu_us(payloads, today=name == "today"))
    module = {name: round(statistics.median(values), 2) for name, values in module_runs.items()}

    # The inference module's input: the valid readings, stamped and packed as the sensor packs them.
    stamped: list[bytes] = []
    for payload in payloads:
        try:
            stamped.extend(encode_reading(r.stamped(received)) for r in decode_payload(payload)[0])
        except MessageError:
            continue
    batches = pack_batches(stamped, MAX_BATCH_BYTES)
    for body in batches:
        assert messages._decode_payload_stdlib(body) == decode_payload(body)
    inference = measure(
        {
            "today": lambda: [messages._decode_payload_stdlib(b) for b in batches],
            "ours": lambda: [decode_payload(b) for b in batches],
        },
        len(stamped),
        repeats,
    )

    # The candidates, on the valid payloads only.
    valid = [reading_payload(f"dev-{i % DEVICES:03d}", 1 + i // DEVICES, random.Random(i)) for i in range(count)]
    objs = [json.loads(p) for p in valid]
    readings = [decode_payload(p)[0][0].stamped(received) for p in valid]
    dicts = [r.to_json_obj() for r in readings]
    decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
    typed = messages._TELEMETRY_DECODER
    items = [typed.decode(p) for p in valid]
    candidates = measure(
        {
            "decode stdlib json": lambda: [messages.decode_json(p) for p in valid],
            **({"decode orjson": lambda: [orjson.loads(p) for p in valid]} if orjson else {}),
            "decode msgspec": lambda: [decoder.decode(p) for p in valid],
            "validate hand-written (stdlib path)": lambda: [messages.parse_reading(o) for o in objs],
            "decode msgspec typed (_TelemetryIn)": lambda: [typed.decode(p) for p in valid],
            "validate hand-written (fast path, after typed decode)": lambda: [messages._fast_reading(i) for i in items],
            "decode+validate pydantic": lambda: [PydanticReading.model_validate_json(p) for p in valid],
            "decode+validate ours": lambda: [decode_payload(p) for p in valid],
            "encode stdlib json": lambda: [encode_json(d) for d in dicts],
            **({"encode orjson": lambda: [orjson.dumps(d) for d in dicts]} if orjson else {}),
            "encode msgspec": lambda: [encoder.encode(d) for d in dicts],
            "to_json_obj": lambda: [r.to_json_obj() for r in readings],
            "encode_reading (msgspec Struct, ours)": lambda: [encode_reading(r) for r in readings],
        },
        len(valid),
        repeats,
    )

    result: dict[str, Any] = {
        "payloads": count,
        "repeats": repeats,
        "malformed_or_unusual_share": MALFORMED_SHARE,
        "sensor_us_per_reading": sensor,
        "sensor_today_vs_ours": round(sensor["today"] / sensor["ours"], 2),
        "sensor_module_cpu_us_per_reading": module,
        "sensor_module_today_vs_ours": round(module["today"] / module["ours"], 2),
        "inference_decode_us_per_reading": inference,
        "inference_decode_today_vs_ours": round(inference["today"] / inference["ours"], 2),
        "readings_per_batch": round(len(stamped) / len(batches), 1),
        "candidates_us_per_reading": candidates,
    }
    print("| path | today µs/reading | ours µs/reading | today/ours |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| sensor: parse, validate, stamp, encode | {sensor['today']} | {sensor['ours']} | "
        f"{result['sensor_today_vs_ours']} |"
    )
    print(
        f"| sensor module in-process (journal, batcher, outbox) | {module['today']} | {module['ours']} | "
        f"{result['sensor_module_today_vs_ours']} |"
    )
    print(
        f"| inference: decode the sensor's batches | {inference['today']} | {inference['ours']} | "
        f"{result['inference_decode_today_vs_ours']} |"
    )
    print("\n| candidate (valid readings) | µs/reading |")
    print("| --- | ---: |")
    for name, value in candidates.items():
        print(f"| {name} | {value} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
