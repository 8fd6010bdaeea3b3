"""Checks run inside a freshly built image (fed on stdin: `docker run -i --entrypoint python IMG - ARGS`).

  --forbid a,b     fail when any of these modules is importable (the edge images carry no Spark/MLflow/pandas)
  --import a,b     fail unless these modules import (catches a missing shared library, e.g. for onnxruntime)
  --bundle DIR     verify the baked-in bundle (sha256 of every file); predict a row with the fleet model and
                   one device model per family through ONNX Runtime and joblib (they must agree); warn when
                   the image's libraries differ from the ones the bundle was trained with
  --mosquitto      start the image's `mosquitto` as this (non-root) user with a generated config on a
                   loopback port and the journal plugin (edgefleet.broker_journal), as edgehub does, and
                   pass one message through it (paho-mqtt); the message must be in the journal
  --writable a,b   fail unless this user can create a file in each of these directories
  --json-file F    fail unless F exists and holds JSON (e.g. the baked-in deployment manifest)
Prints one line per check; exit 1 when a check fails. Uses only what the image has.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forbid", default="")
    parser.add_argument("--import", dest="imports", default="")
    parser.add_argument("--bundle")
    parser.add_argument("--mosquitto", action="store_true")
    parser.add_argument("--writable", default="")
    parser.add_argument("--json-file")
    args = parser.parse_args()
    failed = False

    for directory in filter(None, args.writable.split(",")):
        try:
            with tempfile.NamedTemporaryFile(dir=directory):
                pass
            print(f"writable by uid {os.getuid()}: {directory}")
        except OSError as err:
            print(f"FAIL {directory} is not writable by uid {os.getuid()}: {err}")
            failed = True

    if args.json_file:
        try:
            json.loads(Path(args.json_file).read_text())
            print(f"json: {args.json_file} ok")
        except (OSError, ValueError) as err:
            print(f"FAIL {args.json_file}: {err}")
            failed = True

    if args.mosquitto:
        failed |= not check_mosquitto()

    present = [m for m in filter(None, args.forbid.split(",")) if importlib.util.find_spec(m)]
    print(f"forbidden modules present: {present}")
    failed |= bool(present)

    for module in filter(None, args.imports.split(",")):
        try:
            importlib.import_module(module)
        except Exception as err:  # report every kind of import failure the same way
            print(f"FAIL import {module}: {type(err).__name__}: {err}")
            failed = True
    if args.imports:
        print(f"imports: {args.imports} {'FAILED' if failed else 'ok'}")

    if args.bundle:
        from edgefleet.bundle import BundleReader, verify_bundle

        problems = verify_bundle(Path(args.bundle))
        if problems:
            print("FAIL bundle: " + "; ".join(map(str, problems)))
            return 1
        auto, joblib = BundleReader(Path(args.bundle)), BundleReader(Path(args.bundle), runtime="joblib")
        manifest, row = auto.manifest, auto.fill_values.reshape(1, -1)
        print(f"bundle {manifest.bundle_version}: {len(manifest.devices)} devices, every file verified")
        # The fleet model and one device of each model family, through ONNX Runtime and through
        # joblib (scikit-learn unpickling): both must load here and agree (ONNX computes in float32).
        samples = {"fleet": "image-check-unknown-device"}
        for device_id, entry in sorted(manifest.devices.items()):
            if entry.status == "trained" and entry.family:
                samples.setdefault(entry.family, device_id)
        for family, device_id in samples.items():
            (a,), route = auto.predict(device_id, row)
            (b,), _ = joblib.predict(device_id, row)
            agree = abs(a - b) <= 1e-3 * max(1.0, abs(b))
            print(f"  {family:<18} {route.kind:<6} onnx/auto {a:.6g}  joblib {b:.6g}  {'ok' if agree else 'DIFFER'}")
            failed |= not agree
        python = "{}.{}.{}".format(*sys.version_info[:3])
        for lib, trained in sorted(manifest.libraries.items()):
            try:
                here = python if lib == "python" else metadata.version(lib)
            except metadata.PackageNotFoundError:
                continue  # onnx/skl2onnx: training-only
            same = here.split(".")[:2] == trained.split(".")[:2] if lib == "python" else here == trained
            if not same:
                print(f"WARNING: the bundle was trained with {lib} {trained}, the image has {here}")
    return 1 if failed else 0


def check_mosquitto() -> bool:
    """Run mosquitto as this user on a free loopback port and pass one QoS 1 message through it."""
    executable = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if executable is None:
        print("FAIL mosquitto: not on PATH or in /usr/sbin")
        return False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from edgefleet.broker_journal import journal_config_lines, journal_plugin_path, journal_plugin_paths

    plugin = journal_plugin_path()
    if plugin is None:
        print(f"FAIL the broker journal plugin is not in the image: {', '.join(map(str, journal_plugin_paths()))}")
        return False
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        journal = Path(tmp) / "check.journal"
        lines = [
            "persistence true",
            f"persistence_location {tmp}/",
            "persistence_file check.db",
            *journal_config_lines(plugin, journal, Path(tmp) / "check.db"),
            "allow_anonymous true",
            # Started as root (a local run), Mosquitto would switch to `mosquitto`, who cannot write tmp.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_dest stderr",
            f"listener {port} 127.0.0.1",
        ]
        conf.write_text("\n".join(lines) + "\n")
        broker = subprocess.Popen([executable, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if broker.poll() is not None or time.monotonic() > deadline:
                        out = broker.stdout.read().decode(errors="replace") if broker.stdout else ""
                        print(f"FAIL mosquitto did not start (exit {broker.poll()}): {out.strip()[-500:]}")
                        return False
                    time.sleep(0.05)
            detail, sent = roundtrip(port)
            # The plugin writes the journal's header at start, then each QoS 1 message it acknowledges.
            journalled = journal.exists() and (not sent or b"check/1" in journal.read_bytes())
        finally:
            broker.terminate()
            broker.wait(10)
    if detail == "message passed" and not journalled:
        detail = f"FAIL the message is not in the journal {plugin} writes"
    print(f"mosquitto {executable} as uid {os.getuid()} on 127.0.0.1:{port} with {plugin.name}: {detail}")
    return detail == "message passed"


def roundtrip(port: int) -> tuple[str, bool]:
    """Pass one QoS 1 message through the broker; return the outcome and whether a message was sent."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        return "message passed", False  # no MQTT client in this image: accepting connections is all we can check
    received: list[bytes] = []
    client = mqtt.Client(client_id="image-check")
    client.on_message = lambda _c, _u, msg: received.append(msg.payload)
    client.connect("127.0.0.1", port)
    client.subscribe("check/#", qos=1)
    client.loop_start()
    try:
        time.sleep(0.2)
        client.publish("check/1", b"ping", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return ("message passed" if received == [b"ping"] else f"FAIL no message came back ({received})"), True


if __name__ == "__main__":
    sys.exit(main())
