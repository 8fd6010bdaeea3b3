"""Measure what acknowledging only after the next hop costs the edge modules: with vs without the journal.

The sensor (field message in -> batch out) and the inference module (telemetry batch in ->
predictions out) run in-process against the in-memory edgeHub of the tests, so the figure is the
module's own CPU per reading, not the network's. Each mode runs `--repeats` times, alternating;
the report is the median per mode and the ratio with/without (one run, same machine: timings on
a shared 2-core VM are noisy, ratios less so). The router's figure is benchmarks/router_journal.py.

Usage:
    python benchmarks/journal_cost.py            # 20,000 readings per module, 5 repeats
    python benchmarks/journal_cost.py --quick    # 5,000 readings, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgefleet.endpoints import PREDICTIONS, TELEMETRY  # noqa: E402
from edgefleet.field import FIELD_TOPIC_FILTER  # noqa: E402
from edgefleet.process import load_settings  # noqa: E402
from modules.inference.service import InferenceService  # noqa: E402
from modules.inference.settings import InferenceSettings  # noqa: E402
from modules.sensor.service import SensorService  # noqa: E402
from modules.sensor.settings import SensorSettings  # noqa: E402
from tests.edge_fixtures import reading  # noqa: E402
from tests.modules.fakes import FakeModuleClient  # noqa: E402
from tests.modules.inference.test_service import batch, write_tiny_bundle  # noqa: E402
from tests.modules.sensor.test_startup import StubFieldClient  # noqa: E402

DEVICES = 50
READINGS_PER_BATCH = 20  # the inference input: batches as the sensor sends them
SENSOR_DESIRED = {"batchWindowMs": 200, "maxBatchBytes": 3900, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}


def sensor_us_per_reading(readings: int, journal: bool) -> float:
    """Return the sensor's wall time per reading from the first field message to the last batch sent."""
    messages = [
        (f"fleet/dev-{i % DEVICES}/telemetry", json.dumps(reading(f"dev-{i % DEVICES}", i // DEVICES)).encode())
        for i in range(readings)
    ]
    state = Path(tempfile.mkdtemp())
    settings = load_settings(SensorSettings, field_mqtt_host="127.0.0.1", state_dir=state, report_interval_s=60.0)
    service = SensorService(settings, FakeModuleClient(SENSOR_DESIRED), field_client=StubFieldClient())
    assert service.start(threading.Event())
    if not journal:
        service._journal_append = lambda topic, payload: None  # type: ignore[method-assign]
    started = time.perf_counter()
    for topic, payload in messages:
        service.take_field_message(topic, payload)
    service.stop()
    elapsed = time.perf_counter() - started
    assert service.stats()["forwarded"] == readings
    return elapsed / readings * 1e6


def inference_us_per_reading(readings: int, journal: bool) -> float:
    """Return the inference module's wall time per reading from the first batch in to the last prediction sent."""
    tmp = Path(tempfile.mkdtemp())
    settings = InferenceSettings(
        bundle_dir=write_tiny_bundle(tmp / "bundle", "v1"), state_dir=tmp / "state", edge_device="e"
    )
    client = FakeModuleClient()
    service = InferenceService(settings, client)
    if not journal:
        service._journaled = lambda item: item  # type: ignore[method-assign]
    service.start(threading.Event())
    bodies = [
        json.dumps(
            batch(*(reading(f"d{j % DEVICES}", i * READINGS_PER_BATCH + j) for j in range(READINGS_PER_BATCH)))
        ).encode()
        for i in range(readings // READINGS_PER_BATCH)
    ]
    started = time.perf_counter()
    for body in bodies:
        client.deliver(TELEMETRY, body)
    service.wait_idle(120)
    service.outbox.drain(120)
    elapsed = time.perf_counter() - started
    predicted = sum(len(message.json()["readings"]) for message in client.sent(PREDICTIONS))
    service.stop()
    assert predicted == len(bodies) * READINGS_PER_BATCH, predicted
    return elapsed / predicted * 1e6


def compare(name: str, measure: Callable[[int, bool], float], readings: int, repeats: int) -> dict[str, str | float]:
    """Run `measure` alternately without and with the journal; return medians and their ratio."""
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for journal in (False, True):
            runs[journal].append(measure(readings, journal))
    without, with_ = statistics.median(runs[False]), statistics.median(runs[True])
    return {
        "module": name,
        "without_us": round(without, 1),
        "with_us": round(with_, 1),
        "ratio": round(with_ / without, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5,000 readings, 3 repeats")
    args = parser.parse_args()
    readings, repeats = (5_000, 3) if args.quick else (args.readings, args.repeats)
    results = [
        compare("sensor", sensor_us_per_reading, readings, repeats),
        compare("inference", inference_us_per_reading, readings, repeats),
    ]
    print("| module | µs/reading without journal | with journal | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for row in results:
        print(f"| {row['module']} | {row['without_us']} | {row['with_us']} | {row['ratio']} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
