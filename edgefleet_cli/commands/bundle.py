"""`edgefleet bundle verify|inspect`: check or describe a model bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgefleet_cli.commands import Subcommands

__all__ = ["add_bundle_commands", "cmd_bundle_inspect", "cmd_bundle_verify"]


def add_bundle_commands(sub: Subcommands) -> None:
    """Add `bundle` with its `verify` and `inspect` subcommands."""
    bundle = sub.add_parser("bundle", help="check or describe a model bundle")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_sub.add_parser("verify", help="check every file against the manifest's sha256")
    verify.add_argument("path")
    verify.set_defaults(func=cmd_bundle_verify)
    inspect = bundle_sub.add_parser("inspect", help="summarise a bundle")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_bundle_inspect)


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    """Check every file of the bundle; return 1 when one does not match its manifest entry."""
    from edgefleet.bundle import read_manifest, verify_bundle

    problems = verify_bundle(Path(args.path))
    if problems:
        for problem in problems:
            print(f"BAD {problem}", file=sys.stderr)
        print(f"bundle {args.path}: {len(problems)} problem(s); do not deploy it", file=sys.stderr)
        return 1
    manifest = read_manifest(Path(args.path))
    print(
        f"bundle {args.path} OK: version {manifest.bundle_version}, {sum(1 for _ in manifest.files())} files verified"
    )
    return 0


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    """Print a summary of the bundle, as a table or as JSON; return 0."""
    from edgefleet.bundle import inspect_bundle

    info = inspect_bundle(Path(args.path))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from edgefleet_cli.console import render_inspect

    render_inspect(info)
    return 0
