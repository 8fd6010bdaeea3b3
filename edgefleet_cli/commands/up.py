"""`edgefleet up`: the whole edge on this machine (the work is in `edgefleet_cli.up`)."""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet_cli.commands import Subcommands

if TYPE_CHECKING:
    from edgefleet_cli.local_edge import FieldEndpoint
    from edgefleet_cli.up import UpResult
    from simulator.report import SimulationReport

__all__ = ["add_up_command", "cmd_up"]


def add_up_command(sub: Subcommands) -> None:
    """Add `up`."""
    up = sub.add_parser(
        "up", help="run the whole edge locally (field broker, edgeHub stand-in, sensor, inference, lake sink)"
    )
    up.add_argument("--bundle", required=True, help="model bundle the inference module serves")
    up.add_argument("--simulate", metavar="PROFILE", help="also run the device simulator with this profile")
    up.add_argument("--duration-s", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--deployment", default=str(DEFAULT_TEMPLATE))
    up.add_argument("--workdir", default="out/edge")
    up.add_argument("--lake", default="out/lake")
    up.add_argument(
        "--lake-roll-every-s",
        type=_positive_seconds,
        help="close a lake file and make its rows visible after this long (default: the sink service's, 60)",
    )
    up.add_argument("--edge-device", default="edge1")
    up.add_argument("--ip-base", default="127.0.78", help="modules connect to <ip-base>.10, .11, ... port 8883")
    up.add_argument(
        "--field-port", type=int, default=8883, help="field broker port on 127.0.0.1 (MQTT over TLS; %(default)s)"
    )
    up.add_argument(
        "--insecure-field",
        action="store_true",
        help="DEVELOPMENT ONLY: an anonymous, unencrypted field broker instead of TLS with passwords and an ACL",
    )
    up.add_argument("--dashboard-port", type=int, default=5006, help="live dashboard on http://127.0.0.1:PORT/")
    up.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    up.set_defaults(func=cmd_up)


def _positive_seconds(text: str) -> float:
    """Parse a positive number of seconds for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def cmd_up(args: argparse.Namespace) -> int:
    """Run the edge until Ctrl-C, SIGTERM, the deadline or the simulation's end; return 0, 1 if a module stayed down."""
    from edgefleet.bundle import read_manifest
    from edgefleet.deployment import load_deployment
    from edgefleet.process import stop_event_on_signals
    from edgefleet_cli.local_edge import LocalEdge, replay_module_env
    from edgefleet_cli.up import module_summary, run_up, simulate_on, start_edge

    bundle = Path(args.bundle).resolve()
    version = read_manifest(bundle).bundle_version
    deployment = load_deployment(args.deployment)
    workdir = Path(args.workdir).resolve()
    simulation = None
    progress: dict[str, object] = {}
    module_env: dict[str, dict[str, str]] = {}
    if args.simulate:
        from simulator.profile import load_profile

        profile = load_profile(Path(args.simulate))
        module_env = replay_module_env(profile.start_ts)

        def simulation(endpoint: FieldEndpoint, stop: threading.Event) -> SimulationReport:
            return simulate_on(endpoint, profile, stop, duration_s=args.duration_s, on_progress=progress.update)

    edge = LocalEdge(
        workdir,
        deployment,
        bundle_dir=bundle,
        ip_base=args.ip_base,
        edge_device=args.edge_device,
        desired_overrides={"inference": {"expectedBundleVersion": version}},
        module_env=module_env,
        lake_dir=Path(args.lake).resolve(),
        **({"lake_roll_every_s": args.lake_roll_every_s} if args.lake_roll_every_s is not None else {}),
        field_port=args.field_port,
        dashboard_port=None if args.no_dashboard else args.dashboard_port,
        insecure_field=args.insecure_field,
    )
    if args.insecure_field:
        print(_INSECURE_WARNING.format(port=edge.field_port), file=sys.stderr, flush=True)
    stop = stop_event_on_signals()
    start_edge(edge, stop)  # a failed or interrupted start stops everything it started
    try:
        topic = deployment.desired("sensor").get("fieldTopic", "fleet/+/telemetry")
        field = edge.field_endpoint()
        print(f"edge running: bundle {version}, field broker {field.url} (topic {topic})")
        if field.ca_file is not None:
            _print_field_login(field, edge.field_secrets_dir)
        if edge.dashboard_port is not None:
            print(f"dashboard: http://127.0.0.1:{edge.dashboard_port}/")
        print(f"lake: {edge.lake_dir}  logs: {workdir / 'logs'}  Ctrl-C to stop", flush=True)
        result = run_up(
            edge,
            stop,
            duration_s=args.duration_s,
            simulation=simulation,
            simulator_progress=progress,
            live=sys.stderr.isatty(),
        )
        print("stopping: modules finish in-flight readings, then the lake is flushed", flush=True)
    finally:
        edge.stop()
    print(f"stopped after {result.duration_s:.0f} s; lake in {edge.lake_dir}")
    for line in module_summary(result.last.modules):
        print(f"  {line}")
    for name, count in result.last.broker_restarts.items():
        if count:
            print(f"  broker {name}: restarted {count} time(s) after it died")
    return _exit_code(result, workdir / "logs")


_INSECURE_WARNING = (
    "WARNING: --insecure-field: the field broker on 127.0.0.1:{port} takes anonymous, unencrypted "
    "connections with no ACL; any local process can publish readings as any device. Development only."
)


def _print_field_login(field: FieldEndpoint, secrets: Path) -> None:
    """Print how devices and the simulator log in to the secure field broker."""
    print(f"  CA certificate: {field.ca_file}  (devices verify the broker with it)")
    print(f"  add a device: edgefleet field add-device ID --dir {secrets}  (it may publish fleet/ID/telemetry)")
    print(
        f"  simulate: edgefleet simulate --port {field.port} --ca-file {field.ca_file} "
        f"--username {field.username} --password-file {field.password_file}"
    )


def _exit_code(result: UpResult, log_dir: Path) -> int:
    """Return 0, or 1 with a message when a module was down (or restarting) at the end."""
    from edgefleet_cli.supervisor import describe_exit

    down = result.modules_down()
    for status in down:
        print(
            f"edgefleet: error: module {status.name} was {status.describe()} at the end "
            f"({status.restarts} restart(s), last exit {describe_exit(status.last_exit)}); "
            f"see {log_dir / (status.name + '.log')}",
            file=sys.stderr,
        )
    return 1 if down else 0
