"""`edgefleet demo`: the cloud half of the loop on this machine, start to finish."""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.history import HistorySpec, generate_history, write_history


def run_demo(workdir: Path, devices: int, rows: int, seed: int) -> int:
    """Generate history, train on local Spark with MLflow, verify the bundle, and score with it."""
    from cloud_training.pipeline import run_training
    from cloud_training.settings import TrainSettings
    from edgefleet.bundle import verify_bundle
    from edgefleet.console import console, render_training, training_progress

    workdir.mkdir(parents=True, exist_ok=True)
    history = write_history(
        generate_history(HistorySpec(n_devices=devices, rows_per_device=rows, seed=seed, bad_fraction=0.05)),
        workdir / "history.parquet",
    )
    console.rule(f"1/3 history: {devices} devices x {rows} readings -> {history}")
    settings = TrainSettings(
        history=history,
        out=workdir / "bundle",
        tracking_uri=f"sqlite:///{(workdir / 'mlflow.db').resolve()}",
        registered_model="edgefleet-demo",
    )
    console.rule("2/3 train on local Spark, track in MLflow, export the bundle")
    with training_progress() as on_progress:
        outcome = run_training(settings, on_progress)
    render_training(outcome)
    console.rule("3/3 verify the bundle")
    problems = verify_bundle(outcome.bundle_dir)
    for problem in problems:
        console.print(f"[red]BAD[/red] {problem}")
    console.print(f"bundle verify: {'OK' if not problems else f'{len(problems)} problems'}")
    console.print(
        f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}  "
        f"(registered model {settings.registered_model})"
    )
    (workdir / "summary.json").write_text(json.dumps(outcome.summary, indent=1))
    return 1 if problems else 0
