"""Measure what the fast paths of `cloud_training/fast_paths.py` save per device, and that they change nothing.

One fleet history (the throughput benchmark's generator) is split per device and the serial loop
(`train_device` with the fleet model, one core) is run over the same devices in interleaved
rounds: every fast path off (scikit-learn as shipped), every path on, and every path on but one
(what that one saves). The host's speed drifts by ~10% within minutes, so the modes take turns
every five devices (rotating which goes first) and the figures are medians over rounds of process
CPU time per device. Every mode's model files are compared
with the first mode's, device by device: `identical` must be true.

It prints one line per round, then one JSON object on the last line of stdout. It never asserts.

Usage:
    python benchmarks/train_fast_paths.py                        # 150 devices x 500 rows, 3 rounds
    python benchmarks/train_fast_paths.py --devices 60 --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` is found from the repository root

import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.train_throughput import baseline_config, device_frames, make_history, train_settings  # noqa: E402
from cloud_training.device_training import DeviceResult, FleetPredictors, TrainingConfig, train_device  # noqa: E402
from cloud_training.fast_paths import FAST_PATHS, fast_paths_off, install_fast_paths  # noqa: E402
from cloud_training.fleet import fleet_from_samples, fleet_samples_locally  # noqa: E402

ALL_ON = "every path on"
ALL_OFF = "scikit-learn as shipped"
CHUNK_DEVICES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=150)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser.parse_args(argv)


def modes() -> dict[str, AbstractContextManager[None]]:
    """Return each mode's context, by name; built afresh for every run (a context is used once)."""
    found: dict[str, AbstractContextManager[None]] = {ALL_OFF: fast_paths_off(), ALL_ON: nullcontext()}
    for _, name, _ in FAST_PATHS:
        found[f"all but {name}"] = fast_paths_off(name)
    return found


def run_chunk(
    groups: list[pd.DataFrame], config: TrainingConfig, fleet: FleetPredictors | None, mode: str
) -> tuple[float, list[DeviceResult]]:
    """Train `groups` under `mode`; return the CPU seconds spent and the results."""
    with modes()[mode]:
        started = time.process_time()
        results = [train_device(group, config, fleet) for group in groups]
        return time.process_time() - started, results


def digest_of(results: list[DeviceResult]) -> str:
    """Return one digest of every device's model files, in device order."""
    digest = hashlib.sha256()
    for result in results:
        digest.update(result.device_id.encode())
        digest.update(result.joblib_blob or b"-")
        digest.update(result.onnx_blob or b"-")
    return digest.hexdigest()


def run_round(
    groups: list[pd.DataFrame], config: TrainingConfig, fleet: FleetPredictors | None
) -> tuple[dict[str, float], dict[str, str]]:
    """Train every device under every mode, the modes taking turns every CHUNK_DEVICES devices.

    Returns each mode's CPU seconds per device and its models' digest. Turns this short let every
    mode see the same drift of a shared host.
    """
    names = list(modes())
    cpu_s = dict.fromkeys(names, 0.0)
    results: dict[str, list[DeviceResult]] = {name: [] for name in names}
    for start in range(0, len(groups), CHUNK_DEVICES):
        chunk = groups[start : start + CHUNK_DEVICES]
        turn = start // CHUNK_DEVICES
        for name in names[turn % len(names) :] + names[: turn % len(names)]:  # rotate who goes first
            spent_s, chunk_results = run_chunk(chunk, config, fleet, name)
            cpu_s[name] += spent_s
            results[name].extend(chunk_results)
    return {name: spent / len(groups) for name, spent in cpu_s.items()}, {
        name: digest_of(found) for name, found in results.items()
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fast-paths-"))
    history = make_history(workdir, args.devices, args.rows)
    frame = pd.read_parquet(history)
    config = baseline_config(train_settings(workdir, history), frame)
    groups = device_frames(frame)
    install_fast_paths()
    with threadpool_limits(limits=1):
        fleet = fleet_from_samples(fleet_samples_locally(groups, config), config, None).predictors
        train_device(groups[0], config, fleet)  # warm-up: lazy imports not timed
        cpu: dict[str, list[float]] = {mode: [] for mode in modes()}
        digests: dict[str, str] = {}
        for round_number in range(args.rounds):
            per_device_s, round_digests = run_round(groups, config, fleet)
            for mode, spent_s in per_device_s.items():
                cpu[mode].append(spent_s)
                digests.setdefault(mode, round_digests[mode])
                identical = round_digests[mode] == digests[mode] == digests[ALL_OFF]
                ms = spent_s * 1000
                print(
                    f"round {round_number + 1}: {mode:45s} {ms:6.1f} ms CPU/device  identical={identical}", flush=True
                )
    median_ms = {mode: statistics.median(values) * 1000 for mode, values in cpu.items()}
    summary = {
        "devices": len(groups),
        "rows": args.rows,
        "rounds": args.rounds,
        "ms_cpu_per_device": {mode: round(ms, 2) for mode, ms in median_ms.items()},
        "speedup_all_paths": round(median_ms[ALL_OFF] / median_ms[ALL_ON], 3),
        "ms_saved_by_each_path": {
            mode.removeprefix("all but "): round(ms - median_ms[ALL_ON], 2)
            for mode, ms in median_ms.items()
            if mode.startswith("all but ")
        },
        "identical": len(set(digests.values())) == 1,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
