"""The `edgefleet` command line: one entry point, one subcommand per job.

`build_parser` is the table of contents; each command group adds its own parser
(`edgefleet_cli.commands.<group>`, or a process package's `register`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from cloud_training.cluster import job_failure
from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet.errors import EdgefleetError, validation_message
from edgefleet_cli.commands import Subcommands
from edgefleet_cli.commands.bundle import add_bundle_commands
from edgefleet_cli.commands.compose import add_compose_commands
from edgefleet_cli.commands.demo import add_demo_command
from edgefleet_cli.commands.field import add_field_commands
from edgefleet_cli.commands.history import add_history_commands
from edgefleet_cli.commands.hub import add_hub_commands
from edgefleet_cli.commands.lake import add_lake_commands
from edgefleet_cli.commands.manifest import add_manifest_commands
from edgefleet_cli.commands.up import add_up_command
from edgefleet_cli.train_cli import register_score, register_train

__all__ = ["build_parser", "main"]

logger = logging.getLogger("edgefleet")


def cmd_edgehub(args: argparse.Namespace) -> int:
    from edgefleet.process import load_settings, stop_event_on_signals
    from edgehub.serve import serve_standin
    from edgehub.settings import EdgeHubSettings
    from edgehub.standin import EdgeHubStandIn

    flags = {
        "deployment": args.deployment,
        "variables": args.var,
        "edge_device": args.edge_device,
        "state_dir": args.state_dir,
        "ca_export_dir": args.ca_export_dir,
        "lake_dir": args.lake,
        "ip_base": args.ip_base,
        "module_hosts": args.module_host,
        "upstream_mqtt": args.upstream_mqtt,
        "upstream_username": args.upstream_username,
        "upstream_password_file": args.upstream_password_file,
        "upstream_anonymous": args.upstream_anonymous or None,
        "health_file": args.health_file,
    }
    settings = load_settings(EdgeHubSettings, **{k: v for k, v in flags.items() if v is not None})
    stop = stop_event_on_signals()

    def ready(standin: EdgeHubStandIn) -> None:
        for module in standin.modules:
            env_file = settings.state_dir / "modules" / f"{module}.env"
            print(f"{module}: GatewayHostName={standin.module_host(module)}, env in {env_file}")
        print("edgeHub stand-in running; Ctrl-C to stop")

    return serve_standin(settings, stop, ready)


def cmd_sink(args: argparse.Namespace) -> int:
    from edgefleet.process import load_settings, stop_event_on_signals
    from edgehub.sink_service import SinkService
    from edgehub.sink_settings import SinkSettings

    flags = {
        "listen": args.listen,
        "users_file": args.users_file,
        "allow_anonymous": args.allow_anonymous or None,
        "lake_dir": args.lake,
        "state_dir": args.state_dir,
        "flush_every_s": args.flush_every_s,
        "roll_every_s": args.roll_every_s,
        "health_file": args.health_file,
    }
    settings = load_settings(SinkSettings, **{k: v for k, v in flags.items() if v is not None})
    stop = stop_event_on_signals()

    def ready(service: SinkService) -> None:
        host, port = settings.listen
        print(f"IoT Hub sink listening on {host}:{port}, lake in {settings.lake_dir}; Ctrl-C to stop", flush=True)

    service = SinkService(settings)
    code = service.run(stop, ready)
    print(f"sink stopped: {service.stats()}", flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `edgefleet`."""
    parser = argparse.ArgumentParser(prog="edgefleet", description="One ML model per IoT device, Spark to the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    add_history_commands(sub)
    register_train(sub)

    from dashboard.cli import register as register_dashboard
    from edgefleet_cli.retrain_cli import register as register_retrain
    from simulator.cli import register as register_simulate

    register_retrain(sub)
    register_simulate(sub)
    register_dashboard(sub)

    add_bundle_commands(sub)
    add_manifest_commands(sub)
    _add_edgehub_command(sub)
    add_hub_commands(sub)
    _add_sink_command(sub)
    add_lake_commands(sub)
    add_up_command(sub)
    add_field_commands(sub)
    add_compose_commands(sub)
    register_score(sub)
    add_demo_command(sub)
    return parser


def _add_edgehub_command(sub: Subcommands) -> None:
    edgehub = sub.add_parser("edgehub", help="run the offline edgeHub stand-in (Mosquitto per module, router, lake)")
    edgehub.add_argument("--deployment", default=str(DEFAULT_TEMPLATE))
    edgehub.add_argument("--var", action="append", metavar="NAME=VALUE")
    edgehub.add_argument("--edge-device", default="edge1")
    edgehub.add_argument("--state-dir", default="out/edgehub")
    edgehub.add_argument("--ca-export-dir", help="publish the CA certificate here (default <state-dir>/public)")
    edgehub.add_argument("--lake", default="out/lake")
    edgehub.add_argument("--ip-base", default="127.0.77", help="modules connect to <ip-base>.10, .11, ... port 8883")
    edgehub.add_argument(
        "--module-host",
        action="append",
        metavar="MODULE=IP",
        help="a module's broker address instead of <ip-base>.N (e.g. one container network per module)",
    )
    edgehub.add_argument(
        "--upstream-mqtt",
        metavar="HOST:PORT",
        help="send $upstream to the IoT Hub sink service at this MQTT address instead of writing --lake here",
    )
    edgehub.add_argument("--upstream-username", metavar="USER", help="the stand-in's user on the hub broker")
    edgehub.add_argument(
        "--upstream-password-file",
        metavar="PATH",
        help="file holding that user's password (required with --upstream-mqtt)",
    )
    edgehub.add_argument(
        "--upstream-anonymous", action="store_true", help="no password: a hub run with --allow-anonymous (development)"
    )
    edgehub.add_argument("--health-file", help="touch this file while healthy (container HEALTHCHECK)")
    edgehub.set_defaults(func=cmd_edgehub)


def _add_sink_command(sub: Subcommands) -> None:
    sink = sub.add_parser(
        "sink", help="run the local IoT Hub: an MQTT broker the stand-in sends $upstream to, and the lake"
    )
    sink.add_argument("--listen", default="127.0.0.1:1884", metavar="HOST:PORT", help="hub broker address")
    sink.add_argument("--users-file", metavar="PATH", help="the hub broker's users: a Mosquitto password file (0600)")
    sink.add_argument(
        "--allow-anonymous", action="store_true", help="let any client connect without a password (development only)"
    )
    sink.add_argument("--lake", default="out/lake", help="telemetry lake directory")
    sink.add_argument("--state-dir", default="out/sink", help="broker persistence and logs")
    sink.add_argument("--flush-every-s", type=float, default=5.0, help="write buffered rows at least this often")
    sink.add_argument(
        "--roll-every-s", type=float, help="close a lake file (its rows become visible) after this long (default 60)"
    )
    sink.add_argument("--health-file", help="touch this file while healthy (container HEALTHCHECK)")
    sink.set_defaults(func=cmd_sink)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes print a message and exit 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except EdgefleetError as err:
        print(f"edgefleet: error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"edgefleet: error: {validation_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        failure = job_failure(err)  # a lost cluster or tracking server: one line, not a traceback
        if failure is None:
            raise
        print(f"edgefleet: error: {failure}", file=sys.stderr)
        return 2
