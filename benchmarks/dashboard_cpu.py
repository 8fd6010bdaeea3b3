"""Measure the dashboard's CPU share while the hub streams 1,000 predictions/s from 2,000 devices.

The dashboard runs beside the edge on small hardware, so it must stay cheap: the goal is at most
25% of one core with one browser session open. Starts a hub broker, the dashboard process
(`python -m dashboard`) and headless Chromium on the dashboard, publishes prediction
batch envelopes (10 per batch, as the inference module sends them) at a steady rate, and reads
the dashboard process's CPU time from /proc. Prints one JSON line with the figures.

    .venv/bin/python benchmarks/dashboard_cpu.py [--quick] [--duration-s 30] [--rate 1000] [--devices 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgefleet.routes import Message  # noqa: E402
from edgefleet_cli.local_edge import free_port  # noqa: E402
from edgefleet_cli.process_cpu import cpu_seconds  # noqa: E402
from tests.dashboard.test_dashboard_browser import (  # noqa: E402
    CHROMIUM,
    Chromium,
    DashboardProcess,
    kpi,
    number,
    wait_until,
)
from tests.hub_logins import HubLogins  # noqa: E402

JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}
BATCH_READINGS = 10
WARMUP_S = 3.0


def batch(devices: list[str], first: int, seq: int) -> Message:
    """Return one prediction batch envelope of BATCH_READINGS devices starting at index `first`."""
    items = []
    for offset in range(BATCH_READINGS):
        device = devices[(first + offset) % len(devices)]
        fleet = (first + offset) % len(devices) % 10 == 0  # every tenth device has no model of its own
        items.append(
            {
                "schema": "edgefleet.telemetry/1",
                "device_id": device,
                "seq": seq,
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "features": {"temp": 20.0 + seq % 13, "vib": 0.01 * (seq % 50), "rpm": 1500.0 + seq % 97},
                "label": 1.0 + (seq % 7) * 0.1,
                "prediction": {
                    "value": 1.05 + (seq % 7) * 0.1,
                    "model": "fleet" if fleet else "device",
                    "model_version": "7",
                    "fallback_reason": "no_model" if fleet else None,
                },
                "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T10:00:00Z", "latency_ms": 2.0 + seq % 9},
            }
        )
    body = json.dumps({"schema": "edgefleet.batch/1", "readings": items}, separators=(",", ":")).encode()
    return Message("edge1", "inference", "predictions", {}, JSON, body)


def main() -> int:
    """Run the benchmark and print its JSON line; return 1 when the CPU goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="run for 15 s")
    parser.add_argument("--rate", type=float, default=1000.0, help="readings per second")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--no-browser", action="store_true", help="open no browser session (server idle)")
    args = parser.parse_args()
    duration_s = 15.0 if args.quick else args.duration_s
    devices = [f"dev-{n:05d}" for n in range(args.devices)]
    batches_per_s = args.rate / BATCH_READINGS
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp_text:
        tmp = Path(tmp_text)
        hub_port = free_port("127.0.0.1")
        logins = HubLogins(tmp / "hub-logins")  # the hub broker takes no anonymous clients
        with logins.broker(tmp / "hub", hub_port):
            dashboard = DashboardProcess(hub_port, tmp / "dashboard.log", logins)
            browser: Chromium | None = None
            publisher = logins.publisher(hub_port, "bench-dashboard-publisher")
            try:
                assert publisher.connected.wait(10), "the publisher did not connect"
                if not args.no_browser and Path(CHROMIUM).exists():
                    browser = Chromium(tmp / "chromium")
                    browser.call("Page.navigate", url=dashboard.url)
                    wait_until(lambda: browser.evaluate(kpi("devices")) is not None, 30, "the page")
                start = time.monotonic()
                sent = 0
                cpu_start = wall_start = None
                index = 0
                while True:
                    now = time.monotonic()
                    elapsed = now - start
                    if elapsed >= WARMUP_S + duration_s:
                        break
                    if cpu_start is None and elapsed >= WARMUP_S:
                        cpu_start, wall_start, sent_at_start = cpu_seconds(dashboard.process.pid), now, sent
                    due = int(elapsed * batches_per_s)
                    while index < due:
                        publisher(batch(devices, index * BATCH_READINGS, index))
                        index += 1
                        sent += BATCH_READINGS
                    time.sleep(0.005)
                cpu_end, wall_end = cpu_seconds(dashboard.process.pid), time.monotonic()
                assert cpu_start is not None and wall_start is not None
                publisher.close(10)
                shown = None
                if browser is not None:
                    time.sleep(2.0)
                    shown = number(browser.evaluate(kpi("predictions")))
                    errors = browser.errors()
                else:
                    errors = []
                cpu_share = (cpu_end - cpu_start) / (wall_end - wall_start)
                result = {
                    "benchmark": "dashboard_cpu",
                    "duration_s": round(wall_end - wall_start, 2),
                    "readings_per_s": round((sent - sent_at_start) / (wall_end - wall_start), 1),
                    "batch_readings": BATCH_READINGS,
                    "devices": args.devices,
                    "browser_sessions": 1 if browser is not None else 0,
                    "readings_sent": sent,
                    "predictions_shown": shown,
                    "dashboard_cpu_s": round(cpu_end - cpu_start, 3),
                    "dashboard_cpu_share": round(cpu_share, 4),
                    "goal_cpu_share": 0.25,
                    "ok": cpu_share <= 0.25,
                    "browser_errors": errors,
                }
            finally:
                if browser is not None:
                    browser.close()
                publisher.close(1)
                dashboard.stop()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
