"""Measure how many files a day partition of the lake gets, and what that costs Spark.

A 200-device fleet at 2 readings/s is 34.56 M readings (69 M rows: a sensor row and an
inference row each) a day: too many for a quick run. This drives `LakeSink` directly with a
simulated clock: `--sim-s` simulated seconds of the fleet's real traffic (each second one
telemetry batch and one prediction batch of 400 readings, the upstream messages the edge sends),
through (a) today's flush defaults (a file per flush: 5 s / 10,000 rows) and (b) rolling files
(the sink service's defaults: 60 s / 128 MiB). Files per day are extrapolated from the files
and bytes of the simulated span (a day is 86,400 / sim_s times longer); after compaction a day
is ceil(day bytes / 128 MiB) files, with the merged bytes measured on the simulated span.

Then Spark (local[2]) reads the (a) partition before and after `compact_partition`: the same
rows, many small files vs one file (median of `--repeats` timed scans after a warm-up). On a
local disk the per-file cost is the smallest it gets; object stores add a request per file.

Usage:
    python benchmarks/lake_files.py             # 600 simulated s: 240,000 readings, 480,000 rows
    python benchmarks/lake_files.py --quick     # 120 simulated s, no Spark
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgefleet.lake_compact import DEFAULT_TARGET_BYTES, compact_partition  # noqa: E402
from edgefleet.routes import Message  # noqa: E402
from edgehub.sink import DEFAULT_ROLL_BYTES, LakeSink  # noqa: E402

DEVICES = 200
READINGS_PER_S = 2
DAY_S = 86_400
JSON_PROPS = {"contentType": "application/json", "contentEncoding": "utf-8"}
FEATURES = ("temp", "humidity", "pressure", "vibration")


def messages_for_second(second: int) -> list[Message]:
    """Return one simulated second of upstream traffic: a telemetry batch and a prediction batch."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_795_000_000 + second))
    readings, predictions = [], []
    rng = random.Random(second)  # sensor values: noisy, as real ones (regular ones compress unrealistically)
    for device in range(DEVICES):
        for k in range(READINGS_PER_S):
            seq = second * READINGS_PER_S + k
            features = {name: round(rng.gauss(20.0, 5.0), 3) for name in FEATURES}
            reading = {
                "schema": "edgefleet.telemetry/1",
                "device_id": f"dev-{device:04d}",
                "seq": seq,
                "ts": f"{ts}.{k * 500:03d}Z",
                "features": features,
            }
            readings.append(reading)
            predictions.append(
                {
                    **reading,
                    "prediction": {
                        "value": round(rng.gauss(1.5, 0.5), 6),
                        "model": "ridge",
                        "model_version": "7",
                        "fallback_reason": None,
                    },
                    "edge": {
                        "edge_device": "edge1",
                        "received_ts": f"{ts}.900Z",
                        "latency_ms": round(rng.uniform(0.5, 5.0), 3),
                    },
                }
            )
    batch = "edgefleet.batch/1"
    return [
        Message(
            "edge1", "sensor", "telemetry", {}, JSON_PROPS, json.dumps({"schema": batch, "readings": readings}).encode()
        ),
        Message(
            "edge1",
            "inference",
            "predictions",
            {},
            JSON_PROPS,
            json.dumps({"schema": batch, "readings": predictions}).encode(),
        ),
    ]


class SimClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def drive(lake: Path, sim_s: int, traffic: list[list[Message]], **kwargs: object) -> dict[str, float]:
    """Feed `sim_s` simulated seconds of traffic to a LakeSink; return files, bytes, rows and wall seconds."""
    clock = SimClock()
    started = time.perf_counter()
    sink = LakeSink(lake, clock=clock, tick=False, **kwargs)  # type: ignore[arg-type]
    for second in range(sim_s):
        for message in traffic[second % len(traffic)] if second < len(traffic) else messages_for_second(second):
            sink(message)
        clock.now_s = second + 1.0
        sink.tick_once()
    sink.close()
    files = list(lake.glob("date=*/*.parquet"))
    stats = sink.stats()
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "rows": stats["rows_written"],
        "units_4kb": stats["units_4kb"],
        "readings": stats["rows_written"] / 2,
        "wall_s": time.perf_counter() - started,
    }


def per_day(value: float, sim_s: int) -> float:
    return value * DAY_S / sim_s


def spark_scan_s(spark: object, path: Path, repeats: int) -> float:
    """Return the median seconds of a full scan of a partition (read, aggregate every row) in Spark."""
    from pyspark.sql import functions as F

    def scan() -> float:
        started = time.perf_counter()
        df = spark.read.option("mergeSchema", "true").parquet(str(path))  # type: ignore[attr-defined]
        df.groupBy("device_id").agg(F.avg("temp"), F.max("seq"), F.count("*")).collect()
        return time.perf_counter() - started

    scan()  # warm-up: JIT, caches
    return statistics.median(scan() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim-s", type=int, default=600, help="simulated seconds of fleet traffic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="120 simulated s, no Spark")
    args = parser.parse_args()
    sim_s = 120 if args.quick else args.sim_s
    # The messages repeat every 60 simulated s in content but not in seq, so pre-build them all.
    traffic = [messages_for_second(second) for second in range(sim_s)]
    result: dict[str, object] = {"devices": DEVICES, "readings_per_s": READINGS_PER_S, "simulated_s": sim_s}
    with tempfile.TemporaryDirectory(prefix="lake-files-") as tmp:
        flush_lake, roll_lake = Path(tmp) / "flush", Path(tmp) / "roll"
        flushed = drive(flush_lake, sim_s, traffic)  # LakeSink's defaults: a file per flush (5 s / 10,000 rows)
        rolled = drive(roll_lake, sim_s, traffic, roll_every_s=60.0, roll_bytes=DEFAULT_ROLL_BYTES)
        day_bytes = per_day(flushed["bytes"], sim_s)
        partition = next(flush_lake.glob("date=*"))
        result |= {
            "rows_simulated": flushed["rows"],
            "sink_rows_per_wall_s": round(flushed["rows"] / flushed["wall_s"]),
            "bytes_per_row": round(flushed["bytes"] / flushed["rows"], 1),
            "units_4kb_per_1000_readings": round(1000 * flushed["units_4kb"] / flushed["readings"], 1),
            "files_simulated_flush_defaults": flushed["files"],
            "files_simulated_rolling": rolled["files"],
            "files_per_day_flush_defaults": round(per_day(flushed["files"], sim_s)),
            "files_per_day_rolling_60s": max(
                math.ceil(DAY_S / 60), math.ceil(per_day(rolled["bytes"], sim_s) / DEFAULT_ROLL_BYTES)
            ),
            "lake_mb_per_day_flush_defaults": round(day_bytes / 1e6),
            "lake_mb_per_day_rolling": round(per_day(rolled["bytes"], sim_s) / 1e6),
        }
        spark_before = None
        if not args.quick:
            from cloud_training.spark_job import spark_session

            with spark_session("local[2]", driver_memory="2g", app_name="lake-files") as handle:
                spark_before = spark_scan_s(handle.session, partition, args.repeats)
                compaction = compact_partition(partition)
                spark_after = spark_scan_s(handle.session, partition, args.repeats)
        else:
            compaction = compact_partition(partition)
        merged_ratio = compaction.bytes_after / compaction.bytes_before
        result |= {
            "compaction_files_before": compaction.files_before,
            "compaction_files_after": compaction.files_after,
            "compaction_s": round(compaction.seconds, 2),
            "compaction_rows_per_s": round(compaction.rows / compaction.seconds),
            "merged_bytes_ratio": round(merged_ratio, 3),
            "files_per_day_after_compaction": math.ceil(day_bytes * merged_ratio / DEFAULT_TARGET_BYTES),
        }
        if spark_before is not None:
            result |= {
                "spark_scan_s_before": round(spark_before, 3),
                "spark_scan_s_after": round(spark_after, 3),
                "spark_speedup": round(spark_before / spark_after, 2),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
