"""Measure what serving `fleet_corrected` costs at the edge against the fleet model and a device's own model.

Builds a small bundle in this process (simulator history; the fleet model and device models of each
family made as training makes them, `cloud_training.families`; one device given a correction fitted
on its residuals against the fleet model) and times each kind's `predict` through the bundle reader,
on the ONNX and the joblib runtime, for batches of 1 and 64 rows: the median of `--repeats` runs of
`--calls` calls each, as microseconds per prediction. Then the whole inference module in-process
(the tests' in-memory edgeHub; ONNX): `SERVICE_DEVICES` devices, all served by one kind, send
batches of 20 readings; microseconds of wall time per reading answered, median of `--repeats`.
The module predicts each device's readings of a round in one call (device and fleet_corrected
kinds) and all plain-fleet readings of a round in one call, so this figure shows what that
grouping costs. Bytes per device: what each kind adds to the bundle on disk (model files, or the
correction's manifest JSON) and in memory at the edge (the reader's LRU estimate for a loaded
model; the measured Python/numpy bytes of a correction).

Usage:
    python benchmarks/correction_cost.py            # 2,000 calls per figure, 5 repeats
    python benchmarks/correction_cost.py --quick    # 300 calls, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from cloud_training.device_training import dump_joblib, to_onnx_bytes  # noqa: E402
from cloud_training.families import FAMILIES, make_estimator  # noqa: E402
from cloud_training.fleet import FLEET_FAMILY  # noqa: E402
from edgefleet.bundle import (  # noqa: E402
    MANIFEST_NAME,
    MODELS_DIR,
    BundleManifest,
    BundleReader,
    CorrectedModel,
    Correction,
    DeviceEntry,
    FeatureStats,
    FleetEntry,
    ModelFile,
    Route,
    memory_estimate,
    sha256_bytes,
)
from edgefleet.endpoints import PREDICTIONS, TELEMETRY  # noqa: E402
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN  # noqa: E402
from edgefleet.messages import BATCH_SCHEMA  # noqa: E402
from modules.inference.service import InferenceService  # noqa: E402
from modules.inference.settings import InferenceSettings  # noqa: E402
from simulator.history import HistorySpec, generate_history  # noqa: E402
from simulator.physics import FEATURES  # noqa: E402
from tests.modules.fakes import FakeModuleClient  # noqa: E402

BATCHES = (1, 64)
CORRECTED = "dev-corrected"
SERVICE_DEVICES = 50  # per kind, in the module-level figure
SERVICE_FAMILY = "gradient_boosting"  # the device models of the module-level figure
READINGS_PER_BATCH = 20
# Devices of the module-level figure, by kind: in the manifest with their own model, with a correction,
# or absent (the fleet model, no_model).
SERVICE_PREFIX = {"device": "own", "fleet_corrected": "corr", "fleet": "none"}


def _write(root: Path, rel: str, data: bytes) -> ModelFile:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return ModelFile(path=rel, sha256=sha256_bytes(data), size_bytes=len(data))


def build_bundle(root: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Write the bundle; return sample feature rows and the device id serving each kind ("device/<family>")."""
    history = generate_history(HistorySpec(n_devices=len(FAMILIES) + 1, rows_per_device=600, seed=5))
    x_all = history[list(FEATURES)].to_numpy(dtype=float)
    y_all = history[LABEL_COLUMN].to_numpy(dtype=float)
    fleet = make_estimator(FLEET_FAMILY, 0).fit(x_all, y_all)
    devices: dict[str, DeviceEntry] = {}
    served: dict[str, str] = {}
    groups = list(history.groupby(DEVICE_COLUMN))
    for (device_id, group), family in zip(groups, FAMILIES, strict=False):
        x, y = group[list(FEATURES)].to_numpy(float), group[LABEL_COLUMN].to_numpy(float)
        model = make_estimator(family, 0).fit(x, y)
        stem = f"{MODELS_DIR}/{device_id}"
        devices[str(device_id)] = DeviceEntry(
            status="trained",
            kind="device",
            family=family,
            joblib=_write(root, f"{stem}.joblib", dump_joblib(model)),
            onnx=_write(root, f"{stem}.onnx", to_onnx_bytes(model, len(FEATURES))),
        )
        served[f"device/{family}"] = str(device_id)
    # The last device: least squares on its residuals against the fleet model (training also shrinks them).
    _, group = groups[-1]
    x = group[list(FEATURES)].to_numpy(float)
    residual = group[LABEL_COLUMN].to_numpy(float) - fleet.predict(x)
    solution, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(x)), x]), residual, rcond=None)
    correction = Correction(intercept=float(solution[0]), coef=tuple(float(c) for c in solution[1:]))
    devices[CORRECTED] = DeviceEntry(status="trained", kind="fleet_corrected", correction=correction)
    served["fleet_corrected"] = CORRECTED
    own = devices[served[f"device/{SERVICE_FAMILY}"]]
    for i in range(SERVICE_DEVICES):  # the module-level figure's devices (copies of one model, one correction)
        stem = f"{MODELS_DIR}/{SERVICE_PREFIX['device']}-{i:03d}"
        assert own.joblib is not None and own.onnx is not None
        files = {
            kind: _write(root, f"{stem}.{kind}", (root / model_file.path).read_bytes())
            for kind, model_file in (("joblib", own.joblib), ("onnx", own.onnx))
        }
        devices[f"{SERVICE_PREFIX['device']}-{i:03d}"] = own.model_copy(update=files)
        devices[f"{SERVICE_PREFIX['fleet_corrected']}-{i:03d}"] = devices[CORRECTED]
    manifest = BundleManifest(
        bundle_version="bench",
        created_at="2026-12-06T00:00:00Z",
        features=FEATURES,
        target=LABEL_COLUMN,
        libraries={},
        feature_stats={
            name: FeatureStats(mean=float(col.mean()), std=float(col.std()), p01=0.0, p99=0.0)
            for name, col in zip(FEATURES, x_all.T, strict=True)
        },
        fleet=FleetEntry(
            family=FLEET_FAMILY,
            joblib=_write(root, "fleet.joblib", dump_joblib(fleet)),
            onnx=_write(root, "fleet.onnx", to_onnx_bytes(fleet, len(FEATURES))),
            n_train=len(y_all),
        ),
        devices=devices,
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return x_all, served


def us_per_prediction(model: Any, rows: np.ndarray, calls: int) -> float:
    """Return the wall time per predicted row of `calls` predict calls."""
    started = time.perf_counter()
    for _ in range(calls):
        model.predict(rows)
    return (time.perf_counter() - started) / (calls * len(rows)) * 1e6


class _ZeroModel:
    """A model that costs nothing: what remains of CorrectedModel.predict is the correction's own cost."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))


def service_us_per_reading(root: Path, kind: str, x_all: np.ndarray, readings: int) -> float:
    """Return the inference module's wall time per reading, every reading from a device served by `kind`."""
    tmp = Path(tempfile.mkdtemp(prefix="correction-cost-state-"))
    settings = InferenceSettings(bundle_dir=root, state_dir=tmp, edge_device="bench", report_interval_s=60.0)
    client = FakeModuleClient()
    service = InferenceService(settings, client)
    service.start(threading.Event())
    prefix = SERVICE_PREFIX[kind]

    def body(first_seq: int) -> bytes:
        items = []
        for j in range(READINGS_PER_BATCH):
            seq = first_seq + j
            row = x_all[seq % len(x_all)]
            items.append(
                {
                    "schema": "edgefleet.telemetry/1",
                    "device_id": f"{prefix}-{seq % SERVICE_DEVICES:03d}",
                    "seq": seq,
                    "ts": "2026-12-06T00:00:00Z",
                    "features": dict(zip(FEATURES, row.tolist(), strict=True)),
                }
            )
        return json.dumps({"schema": BATCH_SCHEMA, "readings": items}).encode()

    warm = [body(i * READINGS_PER_BATCH) for i in range(SERVICE_DEVICES // READINGS_PER_BATCH + 1)]
    for message in warm:  # every device's model loaded before the clock starts
        client.deliver(TELEMETRY, message)
    service.wait_idle(120)
    bodies = [body((len(warm) + i) * READINGS_PER_BATCH) for i in range(readings // READINGS_PER_BATCH)]
    started = time.perf_counter()
    for message in bodies:
        client.deliver(TELEMETRY, message)
    service.wait_idle(120)
    service.outbox.drain(120)
    elapsed = time.perf_counter() - started
    answered = sum(len(message.json()["readings"]) for message in client.sent(PREDICTIONS))
    served_by = service.stats()["served_by_model"]
    service.stop()
    expected = (len(warm) + len(bodies)) * READINGS_PER_BATCH
    if answered != expected or served_by[kind] != expected:
        raise RuntimeError(f"{kind}: answered {answered} of {expected}, served by {served_by}")
    return elapsed / len(bodies) / READINGS_PER_BATCH * 1e6


def correction_memory_bytes(reader: BundleReader, fleet: Any, copies: int = 1000) -> float:
    """Return the Python/numpy bytes one device's correction holds at the edge (arrays and its model wrapper)."""
    entry = reader.manifest.devices[CORRECTED]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = []
    for _ in range(copies):
        coef = np.array(entry.correction.coef if entry.correction else (), dtype=float)  # as BundleReader.correction
        held.append(CorrectedModel(fleet, float(entry.correction.intercept if entry.correction else 0.0), coef))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round((after - before) / copies, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--readings", type=int, default=10_000, help="per module-level run")
    parser.add_argument("--quick", action="store_true", help="300 calls, 3 repeats, 2,000 readings")
    args = parser.parse_args()
    calls, repeats = (300, 3) if args.quick else (args.calls, args.repeats)
    readings = 2_000 if args.quick else args.readings
    root = Path(tempfile.mkdtemp(prefix="correction-cost-")) / "bundle"
    x_all, served = build_bundle(root)
    rng = np.random.default_rng(0)
    samples = {batch: x_all[rng.choice(len(x_all), batch, replace=False)] for batch in BATCHES}
    models: dict[tuple[str, str], Any] = {}
    for runtime in ("onnx", "joblib"):
        reader = BundleReader(root, runtime=runtime)
        routes = {"fleet": Route("fleet", None, "no_model"), **{kind: reader.route(d) for kind, d in served.items()}}
        for kind, route in routes.items():
            models[runtime, kind] = model = reader.model(route)
            model.predict(samples[1])  # warm up (the first ONNX run allocates)
    runs: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(repeats):  # every figure once per repeat, so a busy spell on a shared machine hits all alike
        for (runtime, kind), model in models.items():
            for batch, rows in samples.items():
                runs.setdefault((runtime, kind, batch), []).append(us_per_prediction(model, rows, calls))
    # The correction alone (the fleet call excluded), per call rather than per row: what it adds to a group.
    reader = BundleReader(root)
    correction_only = reader.corrected(_ZeroModel(), CORRECTED)
    correction_runs: dict[int, list[float]] = {batch: [] for batch in BATCHES}
    for _ in range(repeats):
        for batch, rows in samples.items():
            correction_runs[batch].append(us_per_prediction(correction_only, rows, calls) * batch)
    us: dict[str, dict[str, float]] = {
        "correction_only_per_call": {
            f"batch{batch}": round(statistics.median(values), 2) for batch, values in correction_runs.items()
        }
    }
    for (runtime, kind, batch), values in runs.items():
        us.setdefault(f"{runtime}_batch{batch}", {})[kind] = round(statistics.median(values), 2)
    module_runs: dict[str, list[float]] = {kind: [] for kind in SERVICE_PREFIX}
    for _ in range(repeats):  # alternating kinds: a busy spell on the shared machine hits them alike
        for kind in SERVICE_PREFIX:
            module_runs[kind].append(service_us_per_reading(root, kind, x_all, readings))
    module_us = {kind: round(statistics.median(runs), 1) for kind, runs in module_runs.items()}
    reader = BundleReader(root)
    manifest = reader.manifest
    per_device: dict[str, dict[str, float]] = {"fleet": {"disk_bytes": 0, "edge_memory_bytes": 0}}
    for kind, device_id in served.items():
        entry = manifest.devices[device_id]
        if entry.correction is not None:
            per_device[kind] = {
                "disk_bytes": len(entry.correction.model_dump_json()),  # in manifest.json
                "edge_memory_bytes": correction_memory_bytes(reader, reader.model(Route("fleet", None, "no_model"))),
            }
        else:
            assert entry.joblib is not None and entry.onnx is not None
            per_device[kind] = {
                "disk_bytes": entry.joblib.size_bytes + entry.onnx.size_bytes,
                "edge_memory_bytes": memory_estimate(entry.onnx.size_bytes, "onnx"),  # the LRU's estimate (ONNX)
            }
    result = {
        "benchmark": "correction_cost",
        "features": len(FEATURES),
        "fleet_family": FLEET_FAMILY,
        "calls": calls,
        "repeats": repeats,
        "us_per_prediction": us,
        "module_us_per_reading": {
            "devices": SERVICE_DEVICES,
            "readings_per_batch": READINGS_PER_BATCH,
            "device_family": SERVICE_FAMILY,
            "readings": readings,
            **module_us,
        },
        "bytes_per_device": per_device,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
