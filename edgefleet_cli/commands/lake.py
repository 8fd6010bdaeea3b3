"""`edgefleet lake compact`: merge a day partition's small parquet files into files sized for Spark.

Safe while the sink keeps writing (see `edgefleet.lake_compact`). Prints one line per partition
(files before -> after, rows, bytes, seconds). Exit 2 on a mistake in the command (no such lake,
a bad date), 1 when another compaction held a partition (it was skipped; run again later).
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from edgefleet.errors import EdgefleetError
from edgefleet_cli.commands import Subcommands

__all__ = ["add_lake_commands", "cmd_lake_compact"]

_BUSY = 1


def add_lake_commands(sub: Subcommands) -> None:
    """Add `lake compact`."""
    lake = sub.add_parser("lake", help="maintain the telemetry lake")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    compact = lake_sub.add_parser(
        "compact", help="merge a day partition's small parquet files into files sized for Spark (safe while writing)"
    )
    compact.add_argument("lake", help="telemetry lake directory (<lake>/date=YYYY-MM-DD/part-*.parquet)")
    which = compact.add_mutually_exclusive_group()
    which.add_argument("--date", help="only this UTC day's partition (YYYY-MM-DD); default: every partition")
    which.add_argument(
        "--older-than-h", dest="older_than_h", type=float, help="only the days that ended at least H hours ago"
    )
    compact.add_argument(
        "--target-mb", dest="target_mb", type=float, default=128.0, help="merged file size in MiB (128)"
    )
    compact.add_argument("--dry-run", dest="dry_run", action="store_true", help="print what would be merged")
    compact.add_argument("--wait", action="store_true", help="wait for another compaction of a partition to end")
    compact.set_defaults(func=cmd_lake_compact)


def cmd_lake_compact(args: argparse.Namespace) -> int:
    """Compact the chosen partitions; return 0, 1 if one was busy (skipped)."""
    from edgefleet.lake_compact import LakeBusyError, compact_partition, lake_partitions

    if args.target_mb <= 0:
        raise EdgefleetError(f"--target-mb must be positive, not {args.target_mb:g}")
    if args.older_than_h is not None and args.older_than_h < 0:
        raise EdgefleetError(f"--older-than-h must be 0 or more, not {args.older_than_h:g}")
    day = _parse_day(args.date) if args.date is not None else None
    partitions = lake_partitions(Path(args.lake), day=day, older_than_h=args.older_than_h)
    if not partitions:
        print(f"{args.lake}: no partition to compact")
        return 0
    status = 0
    for partition in partitions:
        try:
            result = compact_partition(
                partition, int(args.target_mb * 1024 * 1024), dry_run=args.dry_run, wait=args.wait
            )
        except LakeBusyError as err:
            print(f"{partition.name}: skipped: {err}")
            status = _BUSY
            continue
        print(result.summary())
    return status


def _parse_day(text: str) -> date:
    """Return the day a `--date` names; refuse anything but YYYY-MM-DD."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise EdgefleetError(f"--date {text!r} is not a date (YYYY-MM-DD)") from None
