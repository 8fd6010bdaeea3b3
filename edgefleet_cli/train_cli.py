"""The `edgefleet train` and `edgefleet score` subcommands: flags and handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet_cli.training_flags import add_training_flags, csv_flag, settings_from_flags

if TYPE_CHECKING:
    from cloud_training.settings import TrainSettings

__all__ = ["cmd_score", "cmd_train", "register_score", "register_train", "train_settings"]


def register_train(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `train` subcommand to the `edgefleet` parser and return it."""
    train = subparsers.add_parser("train", help="train one model per device on Spark, export and register the bundle")
    train.add_argument("--history", required=True, help="parquet/CSV/JSON Lines file or dir, or a lake dir")
    train.add_argument("--out", help="bundle directory (default out/bundle)")
    train.add_argument("--features", help="comma-separated feature columns (default: numeric columns)")
    add_training_flags(train, tracking_modes=("scalable", "nested", "off"))
    train.add_argument("--fleet-max-rows", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="also print summary and timings as JSON")
    train.set_defaults(func=cmd_train)
    return train


def register_score(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `score` subcommand to the `edgefleet` parser and return it."""
    score = subparsers.add_parser("score", help="batch-score history with a bundle on Spark")
    score.add_argument("--history", required=True)
    score.add_argument("--bundle", required=True, help="bundle directory (features and fallback)")
    score.add_argument("--out", required=True, help="output parquet directory")
    score.add_argument(
        "--model-uri", help="score through mlflow.pyfunc.spark_udf, e.g. models:/edgefleet-fleet@champion"
    )
    score.add_argument("--master", default="local[*]")
    score.set_defaults(func=cmd_score)
    return score


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
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run `edgefleet train` and print its summary."""
    from cloud_training.pipeline import run_training
    from edgefleet_cli.console import render_training, training_progress

    settings = train_settings(args)
    with training_progress(enabled=not args.quiet) as on_progress:
        outcome = run_training(settings, on_progress)
    render_training(outcome)
    if args.json:
        print(json.dumps({"summary": outcome.summary, "timings_s": outcome.timings_s}, default=str))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Run `edgefleet score`: predictions for every history row, written as parquet."""
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
        scored.write.mode("overwrite").parquet(args.out)
        n = handle.session.read.parquet(args.out).count()
    print(f"scored {n:,} rows into {args.out}")
    return 0
