"""The training session: read history, train fleet + device models, export, track, register.

The models are trained on Spark or, for a small fleet on a local master, in this process
(`execution.py` chooses; `local_job.py` runs the same pure functions on local worker processes).
Both paths write the same bundle, MLflow run and summary, which record the choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cloud_training.device_training import BLOB_COLUMNS, TrainingConfig
from cloud_training.execution import ExecutionChoice, choose_execution
from cloud_training.export import write_bundle
from cloud_training.fleet import FleetModel
from cloud_training.report import STATUSES, start_plots, summarize
from cloud_training.settings import TrainSettings
from cloud_training.strategy import STRATEGIES, settle_choices
from cloud_training.tracking import RegisteredBundle, Tracker
from edgefleet.bundle import BundleManifest
from edgefleet.errors import EdgefleetError
from edgefleet.history import DEVICE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass
class TrainingOutcome:
    """What a training session produced and how long each phase took."""

    bundle_dir: Path
    manifest: BundleManifest
    results: pd.DataFrame
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    tracking_uri: str | None = None
    registered: RegisteredBundle | None = None
    plots: list[Path] = field(default_factory=list)
    execution: ExecutionChoice | None = None

    @property
    def models_per_s(self) -> float:
        """Devices processed per second, end to end without JVM start."""
        return len(self.results) / max(self.timings_s["end_to_end_s"], 1e-9)


def run_training(
    settings: TrainSettings, on_progress: ProgressCallback | None = None, on_choice: Callable[[str], None] | None = None
) -> TrainingOutcome:
    """Run one training session end to end, on Spark or in this process (`settings.execution`)."""
    started = time.perf_counter()
    choice = choose_execution(settings.execution, settings.master, settings.history, features=settings.features)
    choose_s = time.perf_counter() - started  # counted in end_to_end_s: what `auto` costs is part of the job
    logger.info("%s", choice.line)
    if on_choice is not None:
        on_choice(choice.line)
    tracker = (
        None if settings.tracking == "off" else Tracker(settings.tracking_uri, settings.experiment, settings.tracking)
    )
    if choice.in_process:
        return _train_in_process(settings, choice, tracker, on_progress, choose_s)
    return _train_on_spark(settings, choice, tracker, on_progress, choose_s)


def _train_in_process(
    settings: TrainSettings,
    choice: ExecutionChoice,
    tracker: Tracker | None,
    on_progress: ProgressCallback | None,
    choose_s: float,
) -> TrainingOutcome:
    """Train with the pure functions on local worker processes: no JVM, no stages, no shuffle."""
    from cloud_training.local_job import device_frames, read_history_local, train_fleet_in_processes

    timings: dict[str, float] = {"choose_s": choose_s, "jvm_start_s": 0.0}
    started = time.perf_counter()
    raw, features = read_history_local(settings.history, settings.features)
    if raw.empty:
        raise EdgefleetError(f"History {settings.history} has no rows with a device_id")
    config = settings.training_config(features)
    frames = device_frames(raw)
    del raw
    workers = choice.workers or 1
    timings["read_s"] = time.perf_counter() - started
    logger.info("training %d devices on %d local worker processes", len(frames), workers)
    run_id = tracker.start(_params(settings, features, choice, workers=workers)) if tracker else None
    try:
        results, fleet = train_fleet_in_processes(
            frames, config, settings.fleet_max_rows, workers, on_progress, timings
        )
        del frames
        return _export_and_track(settings, tracker, run_id, results, fleet, config, timings, started, choice)
    except BaseException:
        if tracker:
            tracker.abort()
        raise


def _train_on_spark(
    settings: TrainSettings,
    choice: ExecutionChoice,
    tracker: Tracker | None,
    on_progress: ProgressCallback | None,
    choose_s: float,
) -> TrainingOutcome:
    """Train on Spark: one device-partitioned frame, the sample pass, then the device pass."""
    from cloud_training.spark_job import (
        collect,
        default_parallelism,
        read_history_spark,
        spark_session,
        training_partitions,
    )

    timings: dict[str, float] = {"choose_s": choose_s}
    with spark_session(settings.master, settings.driver_memory) as handle:
        timings["jvm_start_s"] = handle.jvm_start_s
        started = time.perf_counter()
        spark = handle.session
        raw, features = read_history_spark(spark, settings.history, settings.features)
        # Staleness is judged on the driver from each device's newest reading: no extra pass.
        config = settings.training_config(features)
        n_partitions = training_partitions(default_parallelism(spark))
        spark.conf.set("spark.sql.shuffle.partitions", str(n_partitions))
        timings["read_s"] = time.perf_counter() - started
        logger.info("training in %d partitions on %s", n_partitions, settings.master)

        run_id = tracker.start(_params(settings, features, choice, n_partitions=n_partitions)) if tracker else None
        # Both passes group the same device-partitioned rows: read and shuffle them once.
        by_device = raw.repartition(n_partitions, DEVICE_COLUMN).persist()
        try:
            phase = time.perf_counter()
            fleet = _choose_fleet(by_device, config, settings, timings)
            timings["fleet_s"] = time.perf_counter() - phase
            phase = time.perf_counter()
            results = collect(_train_all_devices(by_device, config, fleet), spark, on_progress)
            timings["train_s"] = time.perf_counter() - phase
        except BaseException:
            if tracker:
                tracker.abort()
            raise
        finally:
            by_device.unpersist()
    try:
        return _export_and_track(settings, tracker, run_id, results, fleet, config, timings, started, choice)
    except BaseException:
        if tracker:
            tracker.abort()
        raise


def _train_all_devices(df: DataFrame, config: TrainingConfig, fleet: FleetModel) -> DataFrame:
    from cloud_training.fleet_job import train_all_devices

    return train_all_devices(df, config, fleet.predictors)


def _choose_fleet(
    df: DataFrame, config: TrainingConfig, settings: TrainSettings, timings: dict[str, float]
) -> FleetModel:
    """Return the fleet model chosen on the devices' pooled samples, or say why there is none."""
    from cloud_training.fleet_job import choose_fleet_on_spark

    try:
        return choose_fleet_on_spark(df, config, settings.fleet_max_rows, timings)
    except ValueError as err:
        if df.limit(1).count() == 0:
            raise EdgefleetError(f"History {settings.history} has no rows with a device_id") from err
        raise EdgefleetError(f"Cannot train the fleet model: {err}. Check the history's data quality.") from err


def _export_and_track(
    settings: TrainSettings,
    tracker: Tracker | None,
    run_id: str | None,
    results: pd.DataFrame,
    fleet: FleetModel,
    config: TrainingConfig,
    timings: dict[str, float],
    started: float,
    choice: ExecutionChoice,
) -> TrainingOutcome:
    results = settle_choices(results, config.max_staleness_days)

    phase = time.perf_counter()
    device_run_ids = tracker.log_device_runs(results, config.features) if tracker and tracker.mode == "nested" else {}
    timings["nested_runs_s"] = time.perf_counter() - phase

    # Drawn on the other core while the bundle is written and logged.
    plots = start_plots(results, settings.out.parent / f"{settings.out.name}-plots") if settings.plots else _no_plots

    phase = time.perf_counter()
    manifest = write_bundle(settings.out, results, fleet, config, run_id, device_run_ids)
    timings["export_s"] = time.perf_counter() - phase

    phase = time.perf_counter()
    summary = {**summarize(results), "execution": choice.as_record()}
    registered = None
    if tracker:
        registered = tracker.finish(
            _metrics(summary, timings, len(results)),
            results,
            plots,
            settings.out,
            config.features,
            settings.registered_model,
        )
    plot_paths = plots()
    timings["tracking_s"] = time.perf_counter() - phase + timings["nested_runs_s"]
    timings["end_to_end_s"] = time.perf_counter() - started + timings["choose_s"]  # JVM start excluded
    return TrainingOutcome(
        bundle_dir=settings.out,
        manifest=manifest,
        results=results.drop(columns=list(BLOB_COLUMNS)),
        summary=summary,
        timings_s=timings,
        run_id=run_id,
        tracking_uri=tracker.tracking_uri if tracker else None,
        registered=registered,
        plots=plot_paths,
        execution=choice,
    )


def _no_plots() -> list[Path]:
    return []


def _params(
    settings: TrainSettings,
    features: tuple[str, ...],
    choice: ExecutionChoice,
    *,
    n_partitions: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Return the run's params: the settings (`execution` as asked), what ran and why, its partitions or workers."""
    params: dict[str, Any] = settings.model_dump(exclude={"features"})
    params.update(features=",".join(features), execution_chosen=choice.chosen, execution_reason=choice.reason)
    params.update({k: v for k, v in {"n_partitions": n_partitions, "workers": workers}.items() if v is not None})
    return params


def _metrics(summary: dict[str, Any], timings: dict[str, float], n_devices: int) -> dict[str, float]:
    metrics: dict[str, float] = {f"devices_{s}": float(summary["counts"][s]) for s in STATUSES}
    for column, qs in summary["quantiles"].items():
        for q, value in qs.items():
            metrics[f"holdout_{column}_{q}"] = value
    metrics["device_beats_fleet"] = float(summary["device_beats_fleet"])
    metrics.update({f"kind_{kind}": float(n) for kind, n in summary["kinds"].items()})
    comparison = summary["comparison"]
    metrics["final_rows"] = float(comparison["rows"])
    for name in ("deployed_mse", "fleet_mse", "device_mse", "corrected_mse"):
        if comparison[name] is not None:
            metrics[f"final_{name}"] = comparison[name]
    strategy = summary["strategy"]
    for name in STRATEGIES:
        metrics[f"check_chose_{name}"] = float(strategy["strategy"] == name)
    for name in ("per_device_mse", "fleet_mse", "corrected_mse", "device_mse"):
        if strategy[name] is not None:
            metrics[f"check_{name}"] = strategy[name]
    metrics["mean_model_bytes"] = summary["mean_model_bytes"]
    metrics.update({k: v for k, v in timings.items()})
    return metrics
