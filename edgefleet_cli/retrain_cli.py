"""The `edgefleet retrain` subcommand: registered here, progress bar and closing summary in rich.

Scheduled from cron, once a day, against the bundle the edge runs::

    edgefleet retrain --lake out/lake --bundle out/bundle --since 24h --out out/bundle-next

writes the merged bundle to `out/bundle-next`, its deployment manifest to
`out/bundle-next.deployment.json`, and moves the registry's `champion` alias only when the fleet improved.
Its flags and settings are cloud_training's (`cloud_training.cli`), shared with `python -m cloud_training`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cloud_training.cli import (
    JOB_HELP,
    RETRAIN_DESCRIPTION,
    add_retrain_arguments,
    json_line,
    retrain_document,
    retrain_settings,
)
from edgefleet_cli.console import console, training_progress

if TYPE_CHECKING:
    from cloud_training.retrain import RetrainOutcome

__all__ = ["CRON_EXAMPLE", "cmd_retrain", "register", "render_retrain"]

CRON_EXAMPLE = "edgefleet retrain --lake out/lake --bundle out/bundle --since 24h --out out/bundle-next"
_MAX_ROWS_SHOWN = 30


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `retrain` subcommand to the `edgefleet` parser and return it."""
    parser = subparsers.add_parser(
        "retrain", help=JOB_HELP["retrain"], description=RETRAIN_DESCRIPTION, epilog=f"cron, daily: {CRON_EXAMPLE}"
    )
    add_retrain_arguments(parser)
    parser.set_defaults(func=cmd_retrain)
    return parser


def cmd_retrain(args: argparse.Namespace) -> int:
    """Run `edgefleet retrain` and print its summary."""
    from cloud_training.retrain import run_retrain

    settings = retrain_settings(args)
    with training_progress(enabled=not args.quiet) as on_progress:
        outcome = run_retrain(settings, on_progress)
    render_retrain(outcome)
    if args.json:
        sys.stdout.write(json_line(retrain_document(outcome)) + "\n")
    return 0


def _mse(value: object) -> str:
    return "-" if value is None or value != value else f"{value:.4g}"  # value != value: NaN


def _outcome(status: object, reason: object) -> str:
    if not isinstance(status, str):
        return "-"
    return f"{status}: {reason}" if isinstance(reason, str) else status


def render_retrain(outcome: RetrainOutcome) -> None:
    """Print the closing summary of a retraining run."""
    from rich.table import Table

    summary = outcome.summary
    reasons = Table(title=f"Retraining: {summary['devices']:,} devices, {summary['picked']:,} picked")
    reasons.add_column("picked because")
    reasons.add_column("devices", justify="right")
    for reason, count in summary["picked_by_reason"].items():
        reasons.add_row(reason, f"{count:,}")
    console.print(reasons)

    decisions = outcome.decisions
    picked = decisions[decisions["reasons"].notna()]
    if not picked.empty:
        # Biggest wins first, then devices whose champion stayed.
        gain = (picked["champion_mse"] - picked["challenger_mse"]).fillna(float("-inf"))
        shown = picked.assign(_gain=gain).sort_values("_gain", ascending=False).head(_MAX_ROWS_SHOWN)
        table = Table(title=f"Picked devices (fresh hold-out MSE; {min(len(picked), _MAX_ROWS_SHOWN)} shown)")
        table.add_column("device")
        table.add_column("reasons")
        for column in ("fresh rows", "champion", "challenger"):
            table.add_column(column, justify="right")
        table.add_column("kept")
        table.add_column("challenger outcome")
        for row in shown.itertuples(index=False):
            table.add_row(
                str(row.device_id),
                str(row.reasons),
                f"{row.n_fresh:,}",
                _mse(row.champion_mse),
                _mse(row.challenger_mse),
                str(row.kept),
                _outcome(row.challenger_status, row.challenger_reason),
            )
        console.print(table)

    console.print(
        f"improved {summary['improved']:,} devices, kept the champion on {summary['kept_champion']:,}; "
        f"mean fresh hold-out MSE {_mse(summary['fresh_mse_champion'])} -> {_mse(summary['fresh_mse_merged'])}"
    )
    timings = outcome.timings_s
    console.print(
        f"{timings['end_to_end_s']:.1f} s end to end (JVM start {timings['jvm_start_s']:.1f} s, "
        f"retrain {timings['retrain_s']:.1f} s, merge {timings['merge_s']:.1f} s, "
        f"tracking {timings['tracking_s']:.1f} s)"
    )
    console.print(f"bundle {outcome.bundle_version} written to {outcome.bundle_dir}")
    console.print(
        f"champion was bundle {outcome.champion_version}; fresh rows since {outcome.cutoff:%Y-%m-%d %H:%M} UTC"
    )
    console.print(f"deployment manifest {outcome.manifest_path}")
    if outcome.run_id:
        console.print(f"MLflow run {outcome.run_id}")
    if outcome.registered:
        reg = outcome.registered
        moved = "alias champion moved here" if outcome.alias_moved else "alias champion not moved (no improvement)"
        console.print(f"registered model {reg.name} version {reg.version}: {moved}")
