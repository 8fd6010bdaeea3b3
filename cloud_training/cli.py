"""The command line of the training jobs: their flags, flags → settings, and the JSON they report.

One definition serves both front ends: `python -m cloud_training` (the training image's entry
point) and `edgefleet train/retrain/score` (which adds a progress bar and tables). Spark, MLflow
and the settings wait for a job to run, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_training.flags import add_training_flags, csv_flag, settings_from_flags
from edgefleet.deployment import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from cloud_training.pipeline import TrainingOutcome
    from cloud_training.retrain import RetrainOutcome
    from cloud_training.settings import RetrainSettings, TrainSettings

__all__ = [
    "JOB_HELP",
    "RETRAIN_DESCRIPTION",
    "ScoreOutcome",
    "add_retrain_arguments",
    "add_score_arguments",
    "add_train_arguments",
    "json_line",
    "retrain_document",
    "retrain_settings",
    "run_score",
    "train_settings",
    "training_document",
]

JOB_HELP = {
    "train": "train one model per device (on Spark, or in-process for a small fleet), export and register the bundle",
    "retrain": "retrain drifted/new/failed devices from the telemetry lake; keep the better model per device",
    "score": "batch-score history with a bundle on Spark",
}
RETRAIN_DESCRIPTION = (
    "Read the lake's labelled readings since --since (default: when --bundle was built), retrain the "
    "devices that need it on Spark, keep each challenger only where it beats the champion on the newest "
    "fresh rows, write the merged bundle and its deployment manifest, and register it in MLflow."
)


@dataclass(frozen=True)
class ScoreOutcome:
    """How many rows a scoring run wrote, and where."""

    rows: int
    out: Path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the training job to `parser`."""
    parser.add_argument("--history", required=True, help="parquet/CSV/JSON Lines file or dir, or a lake dir")
    parser.add_argument("--out", help="bundle directory (default out/bundle)")
    parser.add_argument("--features", help="comma-separated feature columns (default: numeric columns)")
    add_training_flags(parser, tracking_modes=("scalable", "nested", "off"))
    parser.add_argument("--fleet-max-rows", type=int)
    parser.add_argument(
        "--execution",
        choices=["auto", "spark", "local"],
        help="auto (default): in this process on a local master while the history fits in memory, else Spark",
    )
    _add_output_flags(parser, json_help="also print summary and timings as JSON")


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the retraining job to `parser`."""
    parser.add_argument("--lake", required=True, help="telemetry lake directory (date=YYYY-MM-DD/part-*.parquet)")
    parser.add_argument("--bundle", required=True, help="the champion bundle: the one deployed")
    parser.add_argument("--out", help="merged bundle directory (default out/bundle-next)")
    parser.add_argument("--out-manifest", help="deployment manifest path (default <out>.deployment.json)")
    parser.add_argument("--since", help="ISO time or duration before now, e.g. 24h, 90m, 7d (default: bundle's time)")
    parser.add_argument("--history", help="also train challengers on this prior history (parquet/CSV/JSONL/lake)")
    parser.add_argument("--template", help=f"deployment template (default {DEFAULT_TEMPLATE})")
    parser.add_argument("--image-registry", help="registry prefix of the module images, e.g. myacr.azurecr.io")
    parser.add_argument("--var", action="append", metavar="NAME=VALUE", help="expand another ${NAME} in the template")
    parser.add_argument("--drift-factor", type=float, help="live MSE over hold-out MSE that counts as drift (2)")
    parser.add_argument("--min-drift-rows", type=int, help="fresh rows needed to judge drift (20)")
    parser.add_argument("--new-data-factor", type=float, help="retrain once fresh rows reach this x model's rows (1)")
    parser.add_argument("--fresh-holdout-fraction", type=float, help="newest share of fresh rows held out (0.25)")
    parser.add_argument("--improvement-margin", type=float, help="share by which a challenger must win (0)")
    add_training_flags(parser, tracking_modes=("scalable", "off"))
    _add_output_flags(parser, json_help="also print summary and decisions as JSON")


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the batch-scoring job to `parser`."""
    parser.add_argument("--history", required=True)
    parser.add_argument("--bundle", required=True, help="bundle directory (features and fallback)")
    parser.add_argument("--out", required=True, help="output parquet directory")
    parser.add_argument(
        "--model-uri", help="score through mlflow.pyfunc.spark_udf, e.g. models:/edgefleet-fleet@champion"
    )
    parser.add_argument(
        "--master",
        "--remote",
        dest="master",
        default="local[*]",
        help="Spark master, or sc://HOST:PORT (Spark Connect)",
    )


def _add_output_flags(parser: argparse.ArgumentParser, *, json_help: str) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress log lines")
    parser.add_argument("--json", action="store_true", help=json_help)


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """Return TrainSettings from the flags given; unset flags fall back to the environment and defaults."""
    from cloud_training.settings import TrainSettings

    return settings_from_flags(
        TrainSettings,
        args,
        history=args.history,
        out=args.out,
        features=csv_flag(args.features) if args.features else None,
        fleet_max_rows=args.fleet_max_rows,
        execution=args.execution,
    )


def retrain_settings(args: argparse.Namespace) -> RetrainSettings:
    """Return RetrainSettings from the flags given; unset flags fall back to the environment and defaults."""
    from cloud_training.settings import RetrainSettings
    from edgefleet.deployment import parse_variables

    return settings_from_flags(
        RetrainSettings,
        args,
        lake=args.lake,
        bundle=args.bundle,
        out=args.out,
        out_manifest=args.out_manifest,
        since=args.since,
        prior_history=args.history,
        template=args.template,
        image_registry=args.image_registry,
        manifest_variables=parse_variables(args.var),
        drift_factor=args.drift_factor,
        min_drift_rows=args.min_drift_rows,
        new_data_factor=args.new_data_factor,
        fresh_holdout_fraction=args.fresh_holdout_fraction,
        improvement_margin=args.improvement_margin,
    )


def run_score(args: argparse.Namespace) -> ScoreOutcome:
    """Write predictions for every history row as parquet: through the bundle, or an MLflow model URI."""
    from cloud_training.scoring import score_with_bundle, score_with_pyfunc
    from cloud_training.spark_job import read_history_spark, spark_session
    from edgefleet.bundle import read_manifest

    bundle = Path(args.bundle)
    features = read_manifest(bundle).features
    with spark_session(args.master, app_name="edgefleet-score") as handle:
        df, _ = read_history_spark(handle.session, Path(args.history), features)
        if args.model_uri:
            scored = score_with_pyfunc(handle.session, df, args.model_uri, features)
        else:
            scored = score_with_bundle(handle.session, df, bundle)
        out = str(Path(args.out).resolve())  # the cluster writes it: an absolute path, the same for every node
        scored.write.mode("overwrite").parquet(out)
        rows = handle.session.read.parquet(out).count()
    return ScoreOutcome(rows=rows, out=Path(args.out))


def training_document(outcome: TrainingOutcome) -> dict[str, Any]:
    """Return what `train --json` prints: the summary and the phase timings."""
    return {"summary": outcome.summary, "timings_s": outcome.timings_s}


def retrain_document(outcome: RetrainOutcome) -> dict[str, Any]:
    """Return what `retrain --json` prints: versions, the alias, the summary, timings and every decision."""
    decisions = json.loads(outcome.decisions.to_json(orient="records"))  # NaN becomes null
    return {
        "bundle_version": outcome.bundle_version,
        "champion_bundle_version": outcome.champion_version,
        "cutoff": outcome.cutoff.isoformat(),
        "alias_moved": outcome.alias_moved,
        "manifest_path": str(outcome.manifest_path),
        "summary": outcome.summary,
        "timings_s": outcome.timings_s,
        "decisions": decisions,
    }


def json_line(document: dict[str, Any]) -> str:
    """Return `document` as one line of JSON; what JSON cannot hold (paths, times) as text."""
    return json.dumps(document, default=str)
