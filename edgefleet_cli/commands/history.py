"""`edgefleet generate-history`: a seeded synthetic fleet history to train on."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet_cli.commands import Subcommands

__all__ = ["add_history_commands", "cmd_generate_history"]


def add_history_commands(sub: Subcommands) -> None:
    """Add `generate-history`."""
    gen = sub.add_parser("generate-history", help="write a seeded fleet history (parquet)")
    gen.add_argument("--devices", type=int, required=True)
    gen.add_argument("--rows", type=int, required=True, help="readings per device")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="output .parquet path")
    gen.add_argument("--interval-s", type=float, default=300.0, help="seconds between readings")
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="share of devices given a data fault")
    gen.set_defaults(func=cmd_generate_history)


def cmd_generate_history(args: argparse.Namespace) -> int:
    """Write the history; return 0."""
    from edgefleet.history import write_history
    from simulator.history import HistorySpec, generate_history

    spec = HistorySpec(
        n_devices=args.devices,
        rows_per_device=args.rows,
        seed=args.seed,
        interval_s=args.interval_s,
        bad_fraction=args.bad_fraction,
    )
    frame = generate_history(spec)
    path = write_history(frame, Path(args.out))
    print(f"wrote {len(frame):,} readings from {spec.n_devices:,} devices to {path}")
    return 0
