"""The `edgefleet` command line: one entry point, one subcommand per job.

`build_parser` is the table of contents; each command group adds its own parser
(`edgefleet_cli.commands.<group>`, or a process package's `register`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet.errors import EdgefleetError
from edgefleet_cli.commands import Subcommands
from edgefleet_cli.commands.bundle import add_bundle_commands
from edgefleet_cli.commands.demo import add_demo_command
from edgefleet_cli.commands.history import add_history_commands
from edgefleet_cli.commands.manifest import add_manifest_commands
from edgefleet_cli.commands.up import add_up_command

if TYPE_CHECKING:
    from cloud_training.settings import TrainSettings

__all__ = ["build_parser", "main"]

logger = logging.getLogger("edgefleet")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    from cloud_training.settings import TrainSettings

    flags = {
        "history": args.history,
        "out": args.out,
        "features": _csv(args.features) if args.features else None,
        "master": args.master,
        "tracking": args.tracking,
        "tracking_uri": args.tracking_uri,
        "experiment": args.experiment,
        "registered_model": args.registered_model,
        "families": _csv(args.families) if args.families else None,
        "max_model_bytes": int(args.max_model_kb * 1000) if args.max_model_kb else None,
        "max_predict_us": args.max_predict_us,
        "fleet_margin": args.fleet_margin,
        "min_rows": args.min_rows,
        "fleet_max_rows": args.fleet_max_rows,
        "onnx": False if args.no_onnx else None,
        "seed": args.seed,
    }
    return TrainSettings(**{k: v for k, v in flags.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    from cloud_training.pipeline import run_training
    from edgefleet_cli.console import render_training, training_progress

    settings = _train_settings(args)
    with training_progress(enabled=not args.quiet) as on_progress:
        outcome = run_training(settings, on_progress)
    render_training(outcome)
    if args.json:
        print(json.dumps({"summary": outcome.summary, "timings_s": outcome.timings_s}, default=str))
    return 0


def cmd_edgehub(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edgefleet.deployment import load_deployment, parse_variables
    from edgehub.standin import EdgeHubStandIn, StandInSettings, run_standin

    deployment = load_deployment(args.deployment, parse_variables(args.var))
    modules = tuple(deployment.modules)
    upstream_mqtt = None
    if args.upstream_mqtt:
        from edgefleet.hub_wire import parse_hub_address

        upstream_mqtt = parse_hub_address(args.upstream_mqtt)
    settings = StandInSettings(
        state_dir=Path(args.state_dir).resolve(),  # env files must work from any directory
        lake_dir=Path(args.lake).resolve(),
        edge_device=args.edge_device,
        modules=modules,
        routes=tuple(deployment.routes),
        desired={m: deployment.desired(m) for m in modules},
        ip_base=args.ip_base,
        module_hosts=parse_variables(args.module_host) or {},
        upstream_mqtt=upstream_mqtt,
        health_file=Path(args.health_file) if args.health_file else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ready(standin: EdgeHubStandIn) -> None:
        for module in modules:
            env_file = settings.state_dir / "modules" / f"{module}.env"
            print(f"{module}: GatewayHostName={standin.module_host(module)}, env in {env_file}")
        print("edgeHub stand-in running; Ctrl-C to stop")

    run_standin(settings, stop, ready)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edgefleet.hub_wire import parse_hub_address
    from edgehub.sink_service import SinkService, SinkSettings

    host, port = parse_hub_address(args.listen)
    settings = SinkSettings(
        listen_host=host,
        listen_port=port,
        lake_dir=Path(args.lake).resolve(),
        state_dir=Path(args.state_dir).resolve(),
        flush_every_s=args.flush_every_s,
        health_file=Path(args.health_file) if args.health_file else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def ready(service: SinkService) -> None:
        print(f"IoT Hub sink listening on {host}:{port}, lake in {settings.lake_dir}; Ctrl-C to stop", flush=True)

    service = SinkService(settings)
    service.run(stop, ready)
    print(f"sink stopped: {service.stats()}", flush=True)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from cloud_training.scoring import score_with_bundle, score_with_pyfunc
    from cloud_training.spark_job import read_history_spark, spark_session
    from edgefleet.bundle import read_manifest

    bundle = Path(args.bundle)
    features = read_manifest(bundle).features
    with spark_session(args.master, app_name="edgefleet-score") as handle:
        df, _ = read_history_spark(handle.session, Path(args.history), features)
        if args.model_uri:
            scored = score_with_pyfunc(handle.session, df, args.model_uri, features)
        else:
            scored = score_with_bundle(handle.session, df, bundle)
        scored.write.mode("overwrite").parquet(args.out)
        n = handle.session.read.parquet(args.out).count()
    print(f"scored {n:,} rows into {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `edgefleet`."""
    parser = argparse.ArgumentParser(prog="edgefleet", description="One ML model per IoT device, Spark to the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    add_history_commands(sub)
    _add_train_command(sub)

    from dashboard.cli import register as register_dashboard
    from edgefleet_cli.retrain_cli import register as register_retrain
    from simulator.cli import register as register_simulate

    register_retrain(sub)
    register_simulate(sub)
    register_dashboard(sub)

    add_bundle_commands(sub)
    add_manifest_commands(sub)
    _add_edgehub_command(sub)
    _add_sink_command(sub)
    add_up_command(sub)
    _add_score_command(sub)
    add_demo_command(sub)
    return parser


def _add_train_command(sub: Subcommands) -> None:
    train = sub.add_parser("train", help="train one model per device on Spark, export and register the bundle")
    train.add_argument("--history", required=True, help="parquet/CSV/JSON Lines file or dir, or a lake dir")
    train.add_argument("--out", help="bundle directory (default out/bundle)")
    train.add_argument("--features", help="comma-separated feature columns (default: numeric columns)")
    train.add_argument("--master", help="Spark master (default local[*], or $SPARK_MASTER)")
    train.add_argument("--tracking", choices=["scalable", "nested", "off"])
    train.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    train.add_argument("--experiment")
    train.add_argument("--registered-model")
    train.add_argument("--families", help="comma-separated: ridge,random_forest,gradient_boosting")
    train.add_argument("--max-model-kb", type=float, help="edge budget: largest model file, kB")
    train.add_argument("--max-predict-us", type=float, help="edge budget: slowest single-row predict, us")
    train.add_argument("--fleet-margin", type=float, help="share by which a device model must beat the fleet")
    train.add_argument("--min-rows", type=int)
    train.add_argument("--fleet-max-rows", type=int)
    train.add_argument("--no-onnx", action="store_true", help="export joblib files only")
    train.add_argument("--seed", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="also print summary and timings as JSON")
    train.set_defaults(func=cmd_train)


def _add_edgehub_command(sub: Subcommands) -> None:
    edgehub = sub.add_parser("edgehub", help="run the offline edgeHub stand-in (Mosquitto per module, router, lake)")
    edgehub.add_argument("--deployment", default=str(DEFAULT_TEMPLATE))
    edgehub.add_argument("--var", action="append", metavar="NAME=VALUE")
    edgehub.add_argument("--edge-device", default="edge1")
    edgehub.add_argument("--state-dir", default="out/edgehub")
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
    edgehub.add_argument("--health-file", help="touch this file while healthy (container HEALTHCHECK)")
    edgehub.set_defaults(func=cmd_edgehub)


def _add_sink_command(sub: Subcommands) -> None:
    sink = sub.add_parser(
        "sink", help="run the local IoT Hub: an MQTT broker the stand-in sends $upstream to, and the lake"
    )
    sink.add_argument("--listen", default="127.0.0.1:1884", metavar="HOST:PORT", help="hub broker address")
    sink.add_argument("--lake", default="out/lake", help="telemetry lake directory")
    sink.add_argument("--state-dir", default="out/sink", help="broker persistence and logs")
    sink.add_argument("--flush-every-s", type=float, default=5.0, help="write buffered rows at least this often")
    sink.add_argument("--health-file", help="touch this file while healthy (container HEALTHCHECK)")
    sink.set_defaults(func=cmd_sink)


def _add_score_command(sub: Subcommands) -> None:
    score = sub.add_parser("score", help="batch-score history with a bundle on Spark")
    score.add_argument("--history", required=True)
    score.add_argument("--bundle", required=True, help="bundle directory (features and fallback)")
    score.add_argument("--out", required=True, help="output parquet directory")
    score.add_argument(
        "--model-uri", help="score through mlflow.pyfunc.spark_udf, e.g. models:/edgefleet-fleet@champion"
    )
    score.add_argument("--master", default="local[*]")
    score.set_defaults(func=cmd_score)


def _validation_message(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "settings"
        lines.append(f"  {where}: {item['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


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
        print(f"edgefleet: error: {_validation_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
