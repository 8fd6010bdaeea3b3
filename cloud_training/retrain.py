"""`edgefleet retrain`: retrain the devices that need it from the telemetry lake, keep the better model per device.

One Spark pass over the lake's fresh rows (`ts >= cutoff`; the cutoff is `--since` or the champion
bundle's `created_at`) runs the pure `retrain_device` once per device (`retrain_policy.py` says what
it decides, `retrain_spark.py` how Spark runs it). The driver then writes the merged bundle
(`merge.merge_bundle`: unpicked and champion-kept devices and the fleet model are copied byte for
byte), registers it in MLflow, moves the `champion` alias only when the mean fresh hold-out MSE over
the compared devices fell, and writes the deployment manifest for the new bundle.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

import edgefleet
from cloud_training.cluster import check_tracking_server
from cloud_training.export import library_versions
from cloud_training.merge import (
    KEPT_CHALLENGER,
    KEPT_CHAMPION,
    deployment_variables,
    merge_bundle,
    summarize_decisions,
    write_deployment_manifest,
)
from cloud_training.retrain_policy import NOT_TRAINED, RetrainPolicy, edge_drift_devices, reference_mse
from cloud_training.retrain_spark import (
    empty_lake_error,
    labelled,
    read_lake_spark,
    retrain_all_devices,
    since_cutoff,
    with_prior_history,
)
from cloud_training.settings import RetrainSettings, parse_since
from cloud_training.spark_job import collect, default_parallelism, spark_session, training_partitions
from cloud_training.tracking import RegisteredBundle, Tracker
from edgefleet.bundle import BundleManifest, read_manifest, verify_bundle
from edgefleet.errors import BundleError
from edgefleet.history import DEVICE_COLUMN, history_format

__all__ = ["RetrainOutcome", "check_champion", "decision_table", "run_retrain"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass
class RetrainOutcome:
    """What a retraining run decided and produced, and how long each phase took."""

    decisions: pd.DataFrame
    bundle_dir: Path
    bundle_version: str
    manifest: BundleManifest
    champion_version: str
    cutoff: datetime
    alias_moved: bool
    manifest_path: Path
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    tracking_uri: str | None = None
    registered: RegisteredBundle | None = None
    previous_champion: str | None = None

    @property
    def improved_devices(self) -> list[str]:
        """Return the devices whose challenger replaced the champion."""
        return sorted(self.decisions.loc[self.decisions["kept"] == KEPT_CHALLENGER, "device_id"])


@dataclass(frozen=True)
class _Registration:
    """The registry's side of a run: the new version, the champion before it, whether the alias moved."""

    registered: RegisteredBundle | None = None
    previous_champion: str | None = None
    alias_moved: bool = False


DECISION_TABLE_COLUMNS = {
    "device_id": "device_id",
    "pick_reasons": "reasons",
    "champion_status": "champion_status",
    "n_fresh": "n_fresh",
    "n_fresh_holdout": "n_fresh_holdout",
    "live_mse": "live_mse",
    "edge_mse": "edge_mse",
    "reference_mse": "reference_mse",
    "champion_mse": "champion_mse",
    "challenger_mse": "challenger_mse",
    "status": "challenger_status",
    "n_train": "challenger_n_train",
    "reason": "challenger_reason",
    "family": "challenger_family",
    "kept": "kept",
    "decision": "detail",
}


def run_retrain(settings: RetrainSettings, on_progress: ProgressCallback | None = None) -> RetrainOutcome:
    """Run one retraining session end to end."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    champion = check_champion(settings.bundle)
    history_format(settings.lake)  # a missing lake fails here, before the JVM starts
    if settings.tracking != "off":
        check_tracking_server(settings.tracking_uri)  # and so does a tracking server that is down
    cutoff = parse_since(settings.since, datetime.now(UTC)) if settings.since else _created_at(champion)
    policy = _policy(settings, champion, cutoff)
    logger.info("retraining from %s rows since %s against bundle %s", settings.lake, cutoff, champion.bundle_version)
    results = _retrain_on_spark(settings, champion, policy, cutoff, timings, on_progress)

    decisions = decision_table(results, champion)
    summary = summarize_decisions(decisions)
    logger.info(
        "picked %d devices %s, %d improved", summary["picked"], summary["picked_by_reason"], summary["improved"]
    )
    tracker = None if settings.tracking == "off" else Tracker(settings.tracking_uri, settings.experiment, "scalable")
    run_id = tracker.start(_params(settings, champion, cutoff), run_name="edgefleet-retrain") if tracker else None
    try:
        with _timed(timings, "merge_s"):
            adopted = results[results["kept"] == KEPT_CHALLENGER]
            manifest = merge_bundle(settings.out, settings.bundle, champion, adopted, run_id)
        with _timed(timings, "manifest_s"):
            manifest_path = _write_deployment(settings, manifest)
        with _timed(timings, "tracking_s"):
            registration = _register(tracker, run_id, settings, champion, decisions, summary, timings)
    except BaseException:
        if tracker:
            tracker.abort()
        raise
    timings["end_to_end_s"] = time.perf_counter() - started
    return RetrainOutcome(
        decisions=decisions,
        bundle_dir=settings.out,
        bundle_version=manifest.bundle_version,
        manifest=manifest,
        champion_version=champion.bundle_version,
        cutoff=cutoff,
        alias_moved=registration.alias_moved,
        manifest_path=manifest_path,
        summary=summary,
        timings_s=timings,
        run_id=run_id,
        tracking_uri=tracker.tracking_uri if tracker else None,
        registered=registration.registered,
        previous_champion=registration.previous_champion,
    )


def check_champion(bundle: Path) -> BundleManifest:
    """Return the champion's manifest once its files verify and its models load in this environment."""
    champion = read_manifest(bundle)
    problems = verify_bundle(bundle)
    if problems:
        listed = "; ".join(str(p) for p in problems[:3])
        raise BundleError(
            f"Champion bundle {bundle} does not match its manifest ({len(problems)} problem(s)): {listed}"
        )
    built, here = champion.libraries.get("scikit-learn"), library_versions().get("scikit-learn")
    if built != here:
        # Carried-over models must load next to new ones on the edge: one scikit-learn per bundle.
        raise BundleError(
            f"Champion bundle {bundle} was built with scikit-learn {built}, this environment has {here}; "
            "run a full `edgefleet train` instead"
        )
    return champion


def decision_table(results: pd.DataFrame, champion: BundleManifest) -> pd.DataFrame:
    """Return one row per device (lake devices and every champion device): why picked, both MSEs, which kept."""
    table = results[list(DECISION_TABLE_COLUMNS)].rename(columns=DECISION_TABLE_COLUMNS)
    not_trained = table["challenger_status"] == NOT_TRAINED
    table["challenger_status"] = table["challenger_status"].mask(not_trained)
    table["challenger_n_train"] = table["challenger_n_train"].astype("Int64").mask(not_trained)
    absent = sorted(set(champion.devices) - set(table["device_id"]))
    if absent:
        rows = pd.DataFrame(
            {
                "device_id": absent,
                "champion_status": [champion.devices[d].status for d in absent],
                "n_fresh": 0,
                "n_fresh_holdout": 0,
                "reference_mse": [reference_mse(champion.devices[d]) for d in absent],
                "kept": KEPT_CHAMPION,
                "detail": "no labelled lake rows since the cutoff",
            }
        )
        table = pd.concat([table, rows], ignore_index=True)
    return table.sort_values("device_id", ignore_index=True)


def _policy(settings: RetrainSettings, champion: BundleManifest, cutoff: datetime) -> RetrainPolicy:
    """Return the settings' policy, with the devices the edge flagged as drifted since the cutoff."""
    policy = settings.policy(champion)
    flagged = edge_drift_devices(settings.lake, cutoff)
    if not flagged:
        return policy
    logger.info("%d device(s) flagged by edge drift alerts since %s", len(flagged), cutoff)
    return policy.model_copy(update={"edge_drift_devices": flagged})


def _retrain_on_spark(
    settings: RetrainSettings,
    champion: BundleManifest,
    policy: RetrainPolicy,
    cutoff: datetime,
    timings: dict[str, float],
    on_progress: ProgressCallback | None,
) -> pd.DataFrame:
    """Return one row per lake device: its challenger's result and the decision about it."""
    with spark_session(settings.master, settings.driver_memory, app_name="edgefleet-retrain") as handle:
        timings["jvm_start_s"] = handle.jvm_start_s
        phase = time.perf_counter()
        spark = handle.session
        lake_rows = read_lake_spark(spark, settings.lake, champion.features)
        rows = labelled(since_cutoff(lake_rows, cutoff))
        if settings.prior_history is not None:
            rows = with_prior_history(spark, rows, settings.prior_history, champion.features)
        n_partitions = training_partitions(default_parallelism(spark))
        spark.conf.set("spark.sql.shuffle.partitions", str(n_partitions))
        result_df = retrain_all_devices(rows.repartition(n_partitions, DEVICE_COLUMN), policy, settings.bundle)
        results = collect(result_df, spark, on_progress)
        if results.empty:
            raise empty_lake_error(lake_rows, settings.lake, cutoff)
        timings["retrain_s"] = time.perf_counter() - phase
    return results


def _write_deployment(settings: RetrainSettings, manifest: BundleManifest) -> Path:
    """Write the deployment manifest that rolls the merged bundle out; return its path."""
    variables = deployment_variables(
        manifest.bundle_version, edgefleet.__version__, settings.image_registry, settings.manifest_variables
    )
    return write_deployment_manifest(settings.template, settings.manifest_path, variables)


def _register(
    tracker: Tracker | None,
    run_id: str | None,
    settings: RetrainSettings,
    champion: BundleManifest,
    decisions: pd.DataFrame,
    summary: dict[str, Any],
    timings: dict[str, float],
) -> _Registration:
    """Register the merged bundle; move the `champion` alias to it only when the fleet improved."""
    if tracker is None:
        return _Registration()
    previous = tracker.champion_version(settings.registered_model)
    registered = tracker.finish(
        _metrics(summary, timings),
        decisions,
        [],
        settings.out,
        champion.features,
        settings.registered_model,
        claim_champion=False,
    )
    alias_moved = False
    if registered is not None and summary["fleet_improved"]:
        tracker.set_champion(registered.name, registered.version)
        registered = dataclasses.replace(registered, champion=True)
        alias_moved = True
    assert run_id is not None
    tracker.client.set_tag(run_id, "champion_alias_moved", str(alias_moved).lower())
    return _Registration(registered, previous, alias_moved)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record how long the block took under `name`, when it finished."""
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def _created_at(manifest: BundleManifest) -> datetime:
    created = datetime.fromisoformat(manifest.created_at)
    return created.replace(tzinfo=UTC) if created.tzinfo is None else created


def _params(settings: RetrainSettings, champion: BundleManifest, cutoff: datetime) -> dict[str, Any]:
    params: dict[str, Any] = settings.model_dump(exclude={"manifest_variables"})
    params.update(champion_bundle_version=champion.bundle_version, cutoff=cutoff.isoformat(timespec="seconds"))
    return params


def _metrics(summary: dict[str, Any], timings: dict[str, float]) -> dict[str, float]:
    metrics: dict[str, float] = {
        "devices": float(summary["devices"]),
        "devices_picked": float(summary["picked"]),
        "devices_improved": float(summary["improved"]),
        "devices_kept_champion": float(summary["kept_champion"]),
        "fleet_improved": float(summary["fleet_improved"]),
    }
    metrics.update({f"picked_{reason}": float(n) for reason, n in summary["picked_by_reason"].items()})
    for name in ("fresh_mse_champion", "fresh_mse_merged"):
        if summary[name] is not None:
            metrics[name] = summary[name]
    metrics.update(timings)
    return metrics
