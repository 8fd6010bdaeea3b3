"""`edgefleet hub module-twin show|update` and `edgefleet hub invoke-module-method`, as `az iot hub` has them.

They talk to a running stand-in through its control socket (`<state-dir>/control.sock`, see
`edgehub.control`) and print JSON as `az` does: the module twin (`deviceId`, `moduleId`,
`connectionState`, `properties.desired|reported` with `$version`) or the method's
`{"status": ..., "payload": ...}`. Flags take `az`'s names (`--module-id/-m`, `--method-name/--mn`,
`--method-payload/--mp`, `--timeout/--to`) and shorter aliases (`--module`, `--method`, `--payload`).
JSON arguments are inline or `@file.json`. Errors print one line and exit 1 (2 for a mistake in
the command: bad JSON, unknown module).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgefleet_cli.commands import Subcommands

__all__ = ["add_hub_commands"]

DEFAULT_STATE_DIR = "out/edgehub"  # `edgefleet edgehub`'s default
_MISTAKE = 2
_FAILED = 1


def add_hub_commands(sub: Subcommands) -> None:
    """Add `hub` with `module-twin show|update` and `invoke-module-method`."""
    hub = sub.add_parser("hub", help="operate a running edgeHub stand-in like `az iot hub`: module twins, methods")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)

    twin = hub_sub.add_parser("module-twin", help="show or update a module twin")
    twin_sub = twin.add_subparsers(dest="twin_command", required=True)
    show = twin_sub.add_parser("show", help="print a module twin as JSON")
    _common(show)
    show.set_defaults(func=cmd_twin_show)
    update = twin_sub.add_parser("update", help="apply a desired-properties patch (the module gets it at once)")
    _common(update)
    update.add_argument(
        "--desired", required=True, help="desired patch: JSON object or @file.json (null deletes a property)"
    )
    update.set_defaults(func=cmd_twin_update)

    invoke = hub_sub.add_parser("invoke-module-method", help="call a module's direct method and print its answer")
    _common(invoke)
    invoke.add_argument("--method-name", "--mn", "--method", dest="method_name", required=True, help="method name")
    invoke.add_argument(
        "--method-payload",
        "--mp",
        "--payload",
        dest="method_payload",
        default="{}",
        help="JSON payload or @file.json (default: {})",
    )
    invoke.add_argument(
        "--timeout", "--to", dest="timeout", type=float, default=30.0, help="seconds to wait for the answer (30)"
    )
    invoke.add_argument(
        "--connect-timeout",
        "--ct",
        dest="connect_timeout",
        type=float,
        default=0.0,
        help="seconds to wait for the module to connect (0: answer 404 at once)",
    )
    invoke.set_defaults(func=cmd_invoke_method)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--module-id", "-m", "--module", dest="module_id", required=True, help="module id")
    parser.add_argument("--device-id", "-d", dest="device_id", help="edge device id (checked against the stand-in's)")
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="the running stand-in's state dir (default: %(default)s)"
    )


def _json_argument(text: str, flag: str) -> Any:
    """Return the JSON in `text` or in the file `@path`; raise EdgefleetError saying what is wrong."""
    from edgefleet.errors import EdgefleetError

    where = flag
    if text.startswith("@"):
        path = Path(text[1:])
        where = f"{flag} file {path}"
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise EdgefleetError(f"cannot read {where}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise EdgefleetError(f"{where} is not JSON ({err}); e.g. {flag} '{{\"batchWindowMs\": 100}}'") from None


def _call(args: argparse.Namespace, request: dict[str, Any], timeout_s: float = 30.0) -> int:
    """Send a request to the stand-in and print its JSON answer; return the exit code."""
    from edgehub.control import ControlError, call_standin

    try:
        if args.device_id is not None:
            twin = call_standin(Path(args.state_dir), {"op": "twin.show", "module": args.module_id})
            if twin["deviceId"] != args.device_id:
                print(
                    f"edgefleet: error: the stand-in serves device {twin['deviceId']}, not {args.device_id}",
                    file=sys.stderr,
                )
                return _MISTAKE
        answer = call_standin(Path(args.state_dir), request, timeout_s)
    except ControlError as err:
        print(f"edgefleet: error: {err}", file=sys.stderr)
        return _MISTAKE if err.status == 400 or "unknown module" in str(err) else _FAILED
    print(json.dumps(answer, indent=2))
    return 0


def cmd_twin_show(args: argparse.Namespace) -> int:
    """Print a module twin; return the exit code."""
    return _call(args, {"op": "twin.show", "module": args.module_id})


def cmd_twin_update(args: argparse.Namespace) -> int:
    """Apply a desired patch and print the updated twin; return the exit code."""
    from edgefleet.errors import EdgefleetError

    patch = _json_argument(args.desired, "--desired")
    if not isinstance(patch, dict):
        raise EdgefleetError(f"--desired must be a JSON object, not {type(patch).__name__}")
    return _call(args, {"op": "twin.update", "module": args.module_id, "desired": patch})


def cmd_invoke_method(args: argparse.Namespace) -> int:
    """Call a direct method and print `{"status", "payload"}`; return the exit code."""
    from edgefleet.errors import EdgefleetError

    if not 0 < args.timeout <= 300:
        raise EdgefleetError("--timeout must be more than 0 and at most 300 seconds")
    request = {
        "op": "method.invoke",
        "module": args.module_id,
        "method": args.method_name,
        "payload": _json_argument(args.method_payload, "--method-payload"),
        "timeout": args.timeout,
        "connect_timeout": args.connect_timeout,
    }
    return _call(args, request, args.timeout + args.connect_timeout)
