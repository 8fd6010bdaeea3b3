"""`edgefleet manifest validate|build|compose`: check the IoT Edge manifest, build a deployable one, run it locally."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet_cli.commands import Subcommands

__all__ = ["add_manifest_commands", "cmd_manifest_build", "cmd_manifest_compose", "cmd_manifest_validate"]


def add_manifest_commands(sub: Subcommands) -> None:
    """Add `manifest` with its `validate` and `build` subcommands."""
    manifest = sub.add_parser("manifest", help="check the IoT Edge deployment manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    manifest_validate = manifest_sub.add_parser("validate", help="check structure, routes and module endpoints offline")
    manifest_validate.add_argument(
        "path",
        nargs="?",
        default=str(DEFAULT_TEMPLATE),
        help="manifest or template (default: %(default)s)",
    )
    manifest_validate.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="expand ${NAME}; once given, every placeholder needs one"
    )
    manifest_validate.set_defaults(func=cmd_manifest_validate)
    manifest_build = manifest_sub.add_parser(
        "build", help="expand the template (images from module.json, bundle version), validate, write it deployable"
    )
    manifest_build.add_argument("--template", default=str(DEFAULT_TEMPLATE))
    manifest_build.add_argument("--out", default="out/deployment.json")
    manifest_build.add_argument("--bundle", help="bundle the inference image bakes in (its version tags the image)")
    manifest_build.add_argument("--registry", default="", help="image registry prefix, e.g. myacr.azurecr.io")
    manifest_build.add_argument("--modules-dir", default="modules", help="where modules/<m>/module.json live")
    manifest_build.add_argument("--var", action="append", metavar="NAME=VALUE", help="set a placeholder (wins)")
    manifest_build.add_argument(
        "--raw-telemetry",
        action="store_true",
        help="also route the sensor's raw telemetry to $upstream (telemetryToUpstream; off by default: "
        "predictions carry every reading)",
    )
    manifest_build.set_defaults(func=cmd_manifest_build)
    _add_compose_command(manifest_sub)


def _add_compose_command(manifest_sub: Subcommands) -> None:
    compose = manifest_sub.add_parser(
        "compose",
        help="write a docker-compose file that runs exactly the built manifest's modules, as IoT Edge would",
    )
    compose.add_argument("--manifest", default="out/deployment.json", help="the built manifest (`manifest build`)")
    compose.add_argument("--out", default="out/compose.yml", help="compose file to write (default: %(default)s)")
    compose.add_argument(
        "--host-path",
        action="append",
        default=[],
        metavar="SRC=DST",
        help="use DST where the manifest binds host path SRC, e.g. /etc/edgefleet/field=$PWD/secrets/field (repeat)",
    )
    compose.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="MANIFEST=HOST",
        help="publish the manifest's host port MANIFEST on HOST instead (0: any free port; repeat)",
    )
    compose.add_argument(
        "--publish-address", default="127.0.0.1", help="where published ports listen (default: %(default)s)"
    )
    compose.add_argument("--subnet", default="172.28", help="first two octets of the networks (default: %(default)s)")
    compose.add_argument("--edge-device", default="edge1", help="the edge device id (default: %(default)s)")
    compose.add_argument(
        "--secrets-dir",
        default="deployment/secrets",
        help="where `edgefleet compose secrets` put the module keys (default: %(default)s)",
    )
    compose.add_argument("--standin-image", help="edgeHub stand-in image (default: edgefleet-edgehub:<version>)")
    compose.add_argument("--sink-image", help="local IoT Hub sink image (default: edgefleet-sink:<version>)")
    compose.set_defaults(func=cmd_manifest_compose)


def cmd_manifest_validate(args: argparse.Namespace) -> int:
    """Print every problem of the manifest; return 1 when one is an error."""
    from edgefleet.deployment import load_deployment, parse_variables, validate_deployment

    variables = parse_variables(args.var)
    problems = validate_deployment(args.path, variables=variables)
    for problem in problems:
        print(problem, file=sys.stderr)
    errors = sum(problem.severity == "error" for problem in problems)
    if errors:
        print(f"{args.path}: {errors} error(s); fix them before deploying", file=sys.stderr)
        return 1
    deployment = load_deployment(args.path, variables)
    print(f"OK: {len(deployment.modules)} modules, {len(deployment.routes)} routes")
    return 0


def cmd_manifest_build(args: argparse.Namespace) -> int:
    """Expand, validate and write the deployment manifest; return 0."""
    import os

    from edgefleet.deployment import build_variables, parse_variables, write_deployment_manifest

    template = Path(args.template)
    variables = build_variables(
        template,
        given=parse_variables(args.var),
        bundle_dir=Path(args.bundle) if args.bundle else None,
        registry=args.registry,
        modules_dir=Path(args.modules_dir),
        environment=os.environ,
    )
    out = write_deployment_manifest(template, Path(args.out), variables, raw_telemetry=args.raw_telemetry)
    for name in sorted(variables):
        print(f"  ${{{name}}} = {variables[name]}")
    print(f"wrote {out} (validated offline; createOptions in 512-character chunks)")
    return 0


def cmd_manifest_compose(args: argparse.Namespace) -> int:
    """Translate the built manifest into a compose file; return 0."""
    import dataclasses

    from edgefleet.deployment.load import read_manifest_json
    from edgefleet_cli.manifest_compose import (
        ComposeOptions,
        manifest_to_compose,
        parse_host_paths,
        parse_port_overrides,
        write_compose,
    )

    manifest_path = Path(args.manifest).resolve()
    options = ComposeOptions(
        manifest_path=manifest_path,
        host_paths=parse_host_paths(args.host_path),
        ports=parse_port_overrides(args.port),
        publish_address=args.publish_address,
        subnet=args.subnet,
        edge_device=args.edge_device,
        secrets_dir=Path(args.secrets_dir).resolve(),
    )
    images = {"standin_image": args.standin_image, "sink_image": args.sink_image}
    options = dataclasses.replace(options, **{key: value for key, value in images.items() if value})
    compose = manifest_to_compose(read_manifest_json(manifest_path), options)
    out = write_compose(compose, Path(args.out), source=manifest_path)
    modules = [name for name in compose["services"] if name not in ("edgehub", "sink")]
    print(f"wrote {out}: modules {', '.join(modules)} plus the edgeHub stand-in and the sink")
    print(f"run it: docker-compose -f {out} up -d   (down -v removes containers, networks and volumes)")
    return 0
