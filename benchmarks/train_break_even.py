"""Measure where training in-process stops beating Spark: `run_training` forced each way, per fleet size.

For each size it generates one fleet history (the throughput benchmark's generator) and trains
it in-process, then on Spark (`local[2]`), then in-process again: the machine may be shared, so
the Spark run is bracketed by two in-process runs of the same data. `end_to_end_s` excludes the
JVM start, which is printed beside it (in this process it is paid once: later sessions reuse the JVM;
`edgefleet train` pays it on every run). One JSON line per size; it never asserts.

Usage:
    python benchmarks/train_break_even.py                       # 50 150 300 600 devices x 500 rows
    python benchmarks/train_break_even.py --devices 600 1000 --rows 500 --workdir /tmp/be
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

from benchmarks.train_throughput import make_history, train_settings
from cloud_training.execution import Execution
from cloud_training.pipeline import run_training

ORDER: tuple[Execution, ...] = ("local", "spark", "local")


def measure(workdir: Path, n_devices: int, rows: int) -> dict[str, Any]:
    """Train one history in-process, on Spark and in-process again; return the timings and the ratio."""
    history = make_history(workdir, n_devices, rows)
    runs: list[dict[str, Any]] = []
    for i, execution in enumerate(ORDER):
        settings = train_settings(workdir, history, execution).model_copy(update={"out": workdir / f"bundle-{i}"})
        load = os.getloadavg()[0]
        started = time.perf_counter()
        timings = run_training(settings).timings_s
        runs.append(
            {
                "execution": execution,
                "load_avg_1m": round(load, 1),
                "wall_s": round(time.perf_counter() - started, 2),
                "end_to_end_s": round(timings["end_to_end_s"], 2),
                "jvm_start_s": round(timings["jvm_start_s"], 2),
                "train_s": round(timings["train_s"], 2),
            }
        )
    local_s = min(run["end_to_end_s"] for run in runs if run["execution"] == "local")
    spark_s = next(run["end_to_end_s"] for run in runs if run["execution"] == "spark")
    return {
        "devices": n_devices,
        "rows": rows,
        "device_rows": n_devices * rows,
        "runs": runs,
        "spark_over_in_process": round(spark_s / local_s, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure each size and print one JSON line per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 150, 300, 600])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--workdir", type=Path, help="where data, bundles and MLflow dbs go (default: a tempdir)")
    args = parser.parse_args(argv)
    owned = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="edgefleet-break-even-")) if owned else args.workdir.resolve()
    previous_cwd = Path.cwd()
    try:
        for n_devices in args.devices:
            workdir = root / f"{n_devices}x{args.rows}"
            workdir.mkdir(parents=True, exist_ok=True)
            os.chdir(workdir)  # MLflow's and Spark's scratch files land in the workdir, not the repo
            print(json.dumps(measure(workdir, n_devices, args.rows)), flush=True)
    finally:
        os.chdir(previous_cwd)
        if owned:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
