"""`edgefleet simulate` and `python -m simulator`: play a fleet of field devices (or replay a recording) over MQTT."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.process import configure_logging, stop_event_on_signals

__all__ = ["cmd_simulate", "main", "register"]

PROGRESS_EVERY_S = 5.0
DESCRIPTION = (
    "Publish seeded field-device telemetry with faults and drift to an MQTT broker, "
    "and write a report of what was sent."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `simulate` subcommand to an argparse subparsers object and return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="publish telemetry from simulated field devices (or a recording) over MQTT",
        description=DESCRIPTION,
    )
    _add_arguments(parser)
    parser.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator from its own command line; exit 2 with a message on a bad profile or setting."""
    parser = argparse.ArgumentParser(prog="python -m simulator", description=DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    try:
        return cmd_simulate(args)
    except EdgefleetError as err:
        _say(f"simulator: error: {err}", err=True)
        return 2


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="simulator profile, YAML or JSON (default: simulator/profiles/demo.yaml)")
    parser.add_argument("--host", help="broker host (overrides mqtt.host)")
    parser.add_argument("--port", type=int, help="broker port (overrides mqtt.port)")
    parser.add_argument("--qos", type=int, choices=(0, 1), help="MQTT QoS (overrides mqtt.qos)")
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="CA certificate that signed the broker's certificate: connect with TLS, checking the host name "
        "(overrides mqtt.tls_ca_file)",
    )
    parser.add_argument(
        "--username",
        help="broker user name (overrides mqtt.username); on the field broker, the gateway identity that may "
        "publish for every device",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the broker password (chmod 600), read once at start (overrides mqtt.password_file)",
    )
    parser.add_argument("--duration-s", type=float, help="simulated seconds to run (overrides duration_s)")
    parser.add_argument("--rate", type=float, help="cap the fleet's total readings/s (overrides rate_cap_per_s)")
    parser.add_argument(
        "--speed", type=float, help="simulated (or recorded) seconds per wall-clock second; 0 = as fast as allowed"
    )
    parser.add_argument("--replay", metavar="FILE", help="replay a recorded CSV/JSON Lines file instead of simulating")
    parser.add_argument("--report", metavar="PATH", help="write the sent-count report here as JSON")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run `edgefleet simulate`; return 1 when some messages were not delivered, else 0."""
    from simulator.profile import DEMO_PROFILE, load_profile, with_overrides
    from simulator.run import run_replay, run_simulation

    profile = load_profile(Path(args.profile) if args.profile else DEMO_PROFILE)
    changes: dict[str, Any] = {}
    if args.rate is not None:
        changes["rate_cap_per_s"] = args.rate
    if args.speed is not None:
        changes["speed"] = args.speed
    if args.duration_s is not None:
        changes["duration_s"] = args.duration_s
    mqtt: dict[str, Any] = {}
    if args.qos is not None:
        mqtt["qos"] = args.qos
    if args.ca_file is not None:
        mqtt["tls_ca_file"] = args.ca_file
    if args.username is not None:
        mqtt["username"] = args.username
    if args.password_file is not None:
        mqtt.update(password_file=args.password_file, password=None)  # the file replaces a profile's password
    if mqtt:
        changes["mqtt"] = mqtt
    if changes:
        profile = with_overrides(profile, **changes)
    stop = stop_event_on_signals()
    host = args.host or profile.mqtt.host
    port = args.port or profile.mqtt.port
    scheme = "mqtts" if profile.mqtt.tls_ca_file is not None else "mqtt"
    report_path = Path(args.report) if args.report else None
    progress = _Progress()
    if args.replay:
        _say(f"replaying {args.replay} to {scheme}://{host}:{port} (speed {profile.speed:g}); Ctrl-C stops")
        report = run_replay(
            Path(args.replay),
            stop,
            profile=profile,
            host=host,
            port=port,
            on_progress=progress,
            report_path=report_path,
        )
    else:
        duration = f"{profile.duration_s:g} s" if profile.duration_s is not None else "until Ctrl-C"
        _say(
            f"simulating {profile.device_count:,} devices ({profile.total_rate_per_s:,.0f} readings/s"
            f"{f', capped at {profile.rate_cap_per_s:,.0f}' if profile.rate_cap_per_s else ''}) "
            f"for {duration} to {scheme}://{host}:{port}; Ctrl-C stops",
        )
        report = run_simulation(profile, stop, host=host, port=port, on_progress=progress, report_path=report_path)
    totals, delivery, expected = report.totals, report.delivery, report.expected_at_edge
    _say(
        f"sent {totals['sent']:,} readings ({totals['messages']:,} messages, {totals['duplicates_sent']:,} duplicates) "
        f"from {totals['devices']:,} devices in {report.elapsed_s:.1f} s"
    )
    faults = ", ".join(f"{name} {count:,}" for name, count in totals["faults"].items() if count)
    if faults:
        _say(f"faults injected: {faults}")
    _say(
        f"the edge should accept {expected['expected_valid']:,} readings, dead-letter "
        f"{expected['deadletter_non_finite']:,} as non_finite and drop {expected['duplicates']:,} duplicates"
    )
    if report_path is not None:
        _say(f"report: {report_path}")
    lost = delivery["unacknowledged"] + delivery["unsent"]
    if lost:
        _say(
            f"edgefleet: warning: {delivery['unacknowledged']:,} messages unacknowledged and "
            f"{delivery['unsent']:,} not sent when the simulator stopped",
            err=True,
        )
        return 1
    return 0


def _say(text: str, *, err: bool = False) -> None:
    """Print one line for the user (stdout, or stderr for problems)."""
    print(text, file=sys.stderr if err else sys.stdout)


class _Progress:
    """Print a progress line every few seconds."""

    def __init__(self) -> None:
        self._last_s = 0.0

    def __call__(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("done") or snapshot["elapsed_s"] - self._last_s < PROGRESS_EVERY_S:
            return
        self._last_s = snapshot["elapsed_s"]
        state = "" if snapshot["connected"] else " (disconnected, queuing)"
        _say(
            f"{snapshot['elapsed_s']:>6.0f} s  sent {snapshot['sent']:>10,}  {snapshot['rate_per_s']:>8,.0f}/s  "
            f"unacked {snapshot['unacknowledged']:>6,}  behind {snapshot['lag_s']:.2f} s{state}",
        )
