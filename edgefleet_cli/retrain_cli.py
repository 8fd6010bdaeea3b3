"""The `edgefleet retrain` subcommand: flags, handler, and the closing summary (rich).

Scheduled from cron, once a day, against the bundle the edge runs::

    edgefleet retrain --lake out/lake --bundle out/bundle --since 24h --out out/bundle-next

writes the merged bundle to `out/bundle-next`, its deployment manifest to
`out/bundle-next.deployment.json`, and moves the registry's `champion` alias only when the fleet improved.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet_cli.console import console, training_progress
from edgefleet_cli.training_flags import add_training_flags, settings_from_flags

if TYPE_CHECKING:
    from cloud_training.retrain import RetrainOutcome
    from cloud_training.settings import RetrainSettings

CRON_EXAMPLE = "edgefleet retrain --lake out/lake --bundle out/bundle --since 24h --out out/bundle-next"
_MAX_ROWS_SHOWN = 30


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `retrain` subcommand to the `edgefleet` parser and return it."""
    parser = subparsers.add_parser(
        "retrain",
        help="retrain drifted/new/failed devices from the telemetry lake; keep the better model per device",
        description=(
            "Read the lake's labelled readings since --since (default: when --bundle was built), retrain the "
            "devices that need it on Spark, keep each challenger only where it beats the champion on the newest "
            "fresh rows, write the merged bundle and its deployment manifest, and register it in MLflow."
        ),
        epilog=f"cron, daily: {CRON_EXAMPLE}",
    )
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="also print summary and decisions as JSON")
    parser.set_defaults(func=cmd_retrain)
    return parser


def settings_from_args(args: argparse.Namespace) -> RetrainSettings:
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


def cmd_retrain(args: argparse.Namespace) -> int:
    """Run `edgefleet retrain` and print its summary."""
    from cloud_training.retrain import run_retrain

    settings = settings_from_args(args)
    with training_progress(enabled=not args.quiet) as on_progress:
        outcome = run_retrain(settings, on_progress)
    render_retrain(outcome)
    if args.json:
        decisions = json.loads(outcome.decisions.to_json(orient="records"))  # NaN becomes null
        document = {
            "bundle_version": outcome.bundle_version,
            "champion_bundle_version": outcome.champion_version,
            "cutoff": outcome.cutoff.isoformat(),
            "alias_moved": outcome.alias_moved,
            "manifest_path": str(outcome.manifest_path),
            "summary": outcome.summary,
            "timings_s": outcome.timings_s,
            "decisions": decisions,
        }
        sys.stdout.write(json.dumps(document, default=str) + "\n")
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
