"""Measure what the stand-in's SAS front costs a module's messages: through the front vs straight to Mosquitto.

Without the front (the stand-in before SAS checks) a module's TLS connection ended at Mosquitto's
own TLS listener. With it, `edgehub.front` terminates TLS, checks the CONNECT's SAS token and
pipes the bytes to Mosquitto on a loopback port. A paho client, as the SDK publishes, sends QoS 1
messages with up to `--inflight` unacknowledged; the figure is messages/s to the last PUBACK, and
CPU per message of the front's thread plus Mosquitto (both from /proc). Modes alternate,
`--repeats` times each, the publisher in a process of its own; the report is the median per mode
and the ratio (one run, same machine).

Usage:
    python benchmarks/standin_auth.py            # 20,000 small and 2,000 16 kB messages, 3 repeats
    python benchmarks/standin_auth.py --quick    # 5,000 and 500, 2 repeats
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402

from edgehub.auth import ModuleIdentity, generate_key, sas_token, sas_username  # noqa: E402
from edgehub.broker import Broker, BrokerAuth, Listener, mosquitto_password_hash  # noqa: E402
from edgehub.certs import ensure_certs  # noqa: E402
from edgehub.front import AuthFront, FrontRoute  # noqa: E402

HOST_DIRECT, HOST_FRONT = "127.0.88.10", "127.0.88.11"
TOPIC = "devices/edge1/modules/sensor/messages/events/%24.on=telemetry"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(stat_path: str) -> float:
    """Return user+system CPU seconds from a /proc .../stat file."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def publish(host: str, ca_file: Path, count: int, size: int, inflight: int, identity: ModuleIdentity | None) -> float:
    """Publish `count` QoS 1 messages of `size` bytes; return the seconds until the last PUBACK."""
    client = mqtt.Client(client_id="edge1/sensor", clean_session=True, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca_file))
    if identity is not None:
        username = sas_username(identity.hub_hostname, identity.device, identity.module)
        client.username_pw_set(username, sas_token(identity, int(time.time()) + 3600))
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    done = threading.Event()
    acked = [0]

    def on_publish(_c: object, _u: object, _mid: int) -> None:
        acked[0] += 1
        if acked[0] == count:
            done.set()

    client.on_publish = on_publish
    client.connect(host, 8883)
    client.loop_start()
    payload = os.urandom(size // 2).hex().encode()
    try:
        started = time.perf_counter()
        for _ in range(count):
            client.publish(TOPIC, payload, qos=1)
        if not done.wait(300):
            raise RuntimeError(f"only {acked[0]} of {count} acknowledged")
        return time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000, help="messages of 200 bytes per repeat")
    parser.add_argument("--large", type=int, default=2_000, help="messages of 16 kB (a sensor batch) per repeat")
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 and 500 messages, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.repeats = 5_000, 500, 2
    state = Path(tempfile.mkdtemp(prefix="standin-auth-"))
    certs = ensure_certs(state, ips=[HOST_DIRECT, HOST_FRONT])
    identity = ModuleIdentity("edgefleet-local.azure-devices.net", "edge1", "sensor", generate_key())
    # Without the front: Mosquitto's TLS listener, anonymous, as the stand-in was.
    direct = Broker(state / "direct", "direct", [Listener(HOST_DIRECT, 8883, certs)]).start()
    # With it: Mosquitto on loopback with a password and ACL, the front on 8883.
    password, port = secrets.token_urlsafe(32), free_port()
    (state / "auth").mkdir()
    (state / "auth" / "passwd").write_text(f"module-sensor:{mosquitto_password_hash(password)}\n")
    acl = "user module-sensor\ntopic write devices/edge1/modules/sensor/messages/events/#\n"
    (state / "auth" / "acl").write_text(acl)
    auth = BrokerAuth(state / "auth" / "passwd", state / "auth" / "acl")
    behind = Broker(state / "behind", "behind", [Listener("127.0.0.1", port)], auth=auth).start()
    route = FrontRoute(identity, HOST_FRONT, 8883, "127.0.0.1", port, "module-sensor", password)
    front = AuthFront([route], certs).start()
    front_stat = f"/proc/self/task/{front.native_thread_id}/stat"
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    # The publisher runs in its own process: in this one it would compete with the front for the GIL.
    publisher = multiprocessing.get_context("spawn").Pool(1)
    try:
        for size, count in ((200, args.small), (16_000, args.large)):
            for _ in range(args.repeats):
                for mode in ("direct", "front"):
                    broker = direct if mode == "direct" else behind
                    stats = [f"/proc/{broker.pid}/stat"] + ([front_stat] if mode == "front" else [])
                    cpu_before = sum(cpu_s(path) for path in stats)
                    host, who = (HOST_DIRECT, None) if mode == "direct" else (HOST_FRONT, identity)
                    elapsed = publisher.apply(publish, (host, certs.ca_cert, count, size, args.inflight, who))
                    cpu_us = (sum(cpu_s(path) for path in stats) - cpu_before) / count * 1e6
                    results.setdefault((mode, size), []).append((count / elapsed, cpu_us))
    finally:
        publisher.close()
        front.stop()
        behind.stop()
        direct.stop()
    print(f"QoS 1 publishes to PUBACK, {args.inflight} in flight, median of {args.repeats}:")
    for size in (200, 16_000):
        rate = {mode: statistics.median(r for r, _ in results[(mode, size)]) for mode in ("direct", "front")}
        cpu = {mode: statistics.median(c for _, c in results[(mode, size)]) for mode in ("direct", "front")}
        print(
            f"  {size:>6} B: direct {rate['direct']:>8,.0f} msg/s ({cpu['direct']:.0f} us CPU/msg in Mosquitto), "
            f"front {rate['front']:>8,.0f} msg/s ({cpu['front']:.0f} us CPU/msg front+Mosquitto), "
            f"ratio front/direct {rate['front'] / rate['direct']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
