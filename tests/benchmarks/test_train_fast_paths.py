"""benchmarks/train_fast_paths.py runs as its usage says and reports every path, with the same models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cloud_training.fast_paths import FAST_PATHS

REPO = Path(__file__).resolve().parents[2]


def test_the_last_line_names_every_fast_path_and_the_models_are_identical(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/train_fast_paths.py",
            "--devices",
            "6",
            "--rounds",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    assert summary["identical"] is True
    assert set(summary["ms_saved_by_each_path"]) == {name for _, name, _ in FAST_PATHS}
    assert summary["ms_cpu_per_device"]["every path on"] > 0
