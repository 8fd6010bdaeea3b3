"""`edgefleet bundle verify|inspect`: check or describe a model bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgefleet_cli.commands import Subcommands

__all__ = ["add_bundle_commands", "cmd_bundle_inspect", "cmd_bundle_registered", "cmd_bundle_verify"]


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
    registered = bundle_sub.add_parser(
        "registered", help="check that the bundle's MLflow run registered it (read-only); print the version"
    )
    registered.add_argument("path")
    registered.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    registered.add_argument(
        "--registered-model", default="edgefleet-fleet", help="registry name (default: %(default)s)"
    )
    registered.set_defaults(func=cmd_bundle_registered)


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


def cmd_bundle_registered(args: argparse.Namespace) -> int:
    """Print the registered version holding the bundle; return 1 when its run registered none."""
    import os

    from cloud_training.registry import find_registration
    from edgefleet.bundle import read_manifest
    from edgefleet.errors import BundleError

    manifest = read_manifest(Path(args.path))
    if manifest.mlflow_run_id is None:
        raise BundleError(f"bundle {args.path} names no MLflow run (was it built with --tracking off?)")
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    found = find_registration(tracking_uri, args.registered_model, manifest.mlflow_run_id)
    where = f"bundle {args.path} (version {manifest.bundle_version}, MLflow run {manifest.mlflow_run_id})"
    if not found.versions:
        print(f"{where}: no version of {args.registered_model} in {tracking_uri}", file=sys.stderr)
        return 1
    champion = "it is the champion" if found.is_champion else f"champion is version {found.champion_version}"
    print(f"{where} is {args.registered_model} version {found.versions[-1]}; {champion}")
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
