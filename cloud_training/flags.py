"""The flags the training and retraining jobs share, and how they become settings.

Each shared knob gets its flag here once, for `python -m cloud_training` and `edgefleet` alike;
`settings_from_flags` maps the flags given onto a settings class (`TrainSettings` or
`RetrainSettings`). A flag left unset is not passed, so the setting falls back to its
`EDGEFLEET_*` variable, then its default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cloud_training.settings import JobSettings

__all__ = ["add_training_flags", "csv_flag", "settings_from_flags"]

SettingsT = TypeVar("SettingsT", bound="JobSettings")


def csv_flag(value: str) -> tuple[str, ...]:
    """Return the items of a comma-separated flag value, blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_training_flags(parser: argparse.ArgumentParser, *, tracking_modes: Sequence[str]) -> None:
    """Add the Spark, MLflow and model-choice flags of a training job to `parser`."""
    parser.add_argument(
        "--master",
        "--remote",
        dest="master",
        help="Spark master: local[*] (default, or $SPARK_MASTER), spark://HOST:PORT, or sc://HOST:PORT (Spark Connect)",
    )
    parser.add_argument("--tracking", choices=list(tracking_modes))
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    parser.add_argument("--experiment")
    parser.add_argument("--registered-model")
    parser.add_argument("--families", help="comma-separated: ridge,random_forest,gradient_boosting")
    parser.add_argument("--max-model-kb", type=float, help="edge budget: largest model file, kB")
    parser.add_argument("--max-predict-us", type=float, help="edge budget: slowest single-row predict, us")
    parser.add_argument("--fleet-margin", type=float, help="share by which a device model must beat the fleet")
    parser.add_argument(
        "--correction-prior-rows", type=float, help="rows a device needs before its fleet correction is half its own"
    )
    parser.add_argument("--min-rows", type=int)
    parser.add_argument("--no-onnx", action="store_true", help="export joblib files only")
    parser.add_argument("--seed", type=int)


def settings_from_flags(settings_type: type[SettingsT], args: argparse.Namespace, **job_flags: object) -> SettingsT:
    """Return `settings_type` from the shared flags and the job's own (`job_flags`); unset ones are left out."""
    flags = {
        "master": args.master,
        "tracking": args.tracking,
        "tracking_uri": args.tracking_uri,
        "experiment": args.experiment,
        "registered_model": args.registered_model,
        "families": csv_flag(args.families) if args.families else None,
        "max_model_bytes": int(args.max_model_kb * 1000) if args.max_model_kb else None,
        "max_predict_us": args.max_predict_us,
        "fleet_margin": args.fleet_margin,
        "correction_prior_rows": args.correction_prior_rows,
        "min_rows": args.min_rows,
        "onnx": False if args.no_onnx else None,
        "seed": args.seed,
        **job_flags,
    }
    return settings_type(**{k: v for k, v in flags.items() if v is not None})
