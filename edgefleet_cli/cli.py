"""The `edgefleet` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.errors import EdgefleetError

logger = logging.getLogger("edgefleet")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def cmd_generate_history(args: argparse.Namespace) -> int:
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


def _train_settings(args: argparse.Namespace) -> Any:
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


def cmd_bundle_verify(args: argparse.Namespace) -> int:
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
    from edgefleet.bundle import inspect_bundle

    info = inspect_bundle(Path(args.path))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from edgefleet_cli.console import render_inspect

    render_inspect(info)
    return 0


def cmd_manifest_validate(args: argparse.Namespace) -> int:
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
    import os

    from edgefleet.deployment import parse_variables
    from edgefleet.manifest_build import build_variables, write_deployment_manifest

    template = Path(args.template)
    variables = build_variables(
        template,
        given=parse_variables(args.var),
        bundle_dir=Path(args.bundle) if args.bundle else None,
        registry=args.registry,
        modules_dir=Path(args.modules_dir),
        environment=os.environ,
    )
    out = write_deployment_manifest(template, Path(args.out), variables)
    for name in sorted(variables):
        print(f"  ${{{name}}} = {variables[name]}")
    print(f"wrote {out} (validated offline; createOptions in 512-character chunks)")
    return 0


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
        "lake_dir": args.lake,
        "ip_base": args.ip_base,
        "module_hosts": args.module_host,
        "upstream_mqtt": args.upstream_mqtt,
        "health_file": args.health_file,
    }
    settings = load_settings(EdgeHubSettings, **{k: v for k, v in flags.items() if v is not None})
    stop = stop_event_on_signals()

    def ready(standin: EdgeHubStandIn) -> None:
        for module in standin.modules:
            env_file = settings.state_dir / "modules" / f"{module}.env"
            print(f"{module}: GatewayHostName={standin.module_host(module)}, env in {env_file}")
        print("edgeHub stand-in running; Ctrl-C to stop")

    serve_standin(settings, stop, ready)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from edgefleet.process import load_settings, stop_event_on_signals
    from edgehub.sink_service import SinkService
    from edgehub.sink_settings import SinkSettings

    flags = {
        "listen": args.listen,
        "lake_dir": args.lake,
        "state_dir": args.state_dir,
        "flush_every_s": args.flush_every_s,
        "health_file": args.health_file,
    }
    settings = load_settings(SinkSettings, **{k: v for k, v in flags.items() if v is not None})
    stop = stop_event_on_signals()

    def ready(service: SinkService) -> None:
        host, port = settings.listen
        print(f"IoT Hub sink listening on {host}:{port}, lake in {settings.lake_dir}; Ctrl-C to stop", flush=True)

    service = SinkService(settings)
    service.run(stop, ready)
    print(f"sink stopped: {service.stats()}", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edgefleet.bundle import read_manifest
    from edgefleet.deployment import load_deployment
    from edgefleet_cli.local_edge import LocalEdge
    from edgefleet_cli.up import run_up

    bundle = Path(args.bundle).resolve()
    version = read_manifest(bundle).bundle_version
    deployment = load_deployment(args.deployment)
    workdir = Path(args.workdir).resolve()
    simulation = None
    progress: dict[str, object] = {}
    if args.simulate:
        from simulator.profile import load_profile
        from simulator.run import run_simulation

        profile = load_profile(Path(args.simulate))

        def simulation(port: int, stop: threading.Event) -> object:
            return run_simulation(
                profile, stop, host="127.0.0.1", port=port, duration_s=args.duration_s, on_progress=progress.update
            )

    edge = LocalEdge(
        workdir,
        deployment,
        bundle_dir=bundle,
        ip_base=args.ip_base,
        edge_device=args.edge_device,
        desired_overrides={"inference": {"expectedBundleVersion": version}},
        lake_dir=Path(args.lake).resolve(),
        field_port=args.field_port,
        dashboard_port=None if args.no_dashboard else args.dashboard_port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with edge:
        topic = deployment.desired("sensor").get("fieldTopic", "fleet/+/telemetry")
        print(f"edge running: bundle {version}, field broker mqtt://127.0.0.1:{edge.field_port} (topic {topic})")
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
    print(f"stopped after {result.duration_s:.0f} s; lake in {edge.lake_dir}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from edgefleet_cli.demo import run_demo

    return run_demo(
        Path(args.workdir),
        devices=args.devices,
        rows=args.rows,
        seed=args.seed,
        edge_seconds=args.edge_seconds,
        rate_per_s=args.rate,
        dashboard_port=None if args.no_dashboard else args.dashboard_port,
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `edgefleet`."""
    parser = argparse.ArgumentParser(prog="edgefleet", description="One ML model per IoT device, Spark to the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate-history", help="write a seeded fleet history (parquet)")
    gen.add_argument("--devices", type=int, required=True)
    gen.add_argument("--rows", type=int, required=True, help="readings per device")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="output .parquet path")
    gen.add_argument("--interval-s", type=float, default=300.0, help="seconds between readings")
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="share of devices given a data fault")
    gen.set_defaults(func=cmd_generate_history)

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

    from dashboard.cli import register as register_dashboard
    from edgefleet_cli.retrain_cli import register as register_retrain
    from simulator.cli import register as register_simulate

    register_retrain(sub)
    register_simulate(sub)
    register_dashboard(sub)

    bundle = sub.add_parser("bundle", help="check or describe a model bundle")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_sub.add_parser("verify", help="check every file against the manifest's sha256")
    verify.add_argument("path")
    verify.set_defaults(func=cmd_bundle_verify)
    inspect = bundle_sub.add_parser("inspect", help="summarise a bundle")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_bundle_inspect)

    manifest = sub.add_parser("manifest", help="check the IoT Edge deployment manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    manifest_validate = manifest_sub.add_parser("validate", help="check structure, routes and module endpoints offline")
    manifest_validate.add_argument(
        "path",
        nargs="?",
        default="deployment/deployment.template.json",
        help="manifest or template (default: %(default)s)",
    )
    manifest_validate.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="expand ${NAME}; once given, every placeholder needs one"
    )
    manifest_validate.set_defaults(func=cmd_manifest_validate)
    manifest_build = manifest_sub.add_parser(
        "build", help="expand the template (images from module.json, bundle version), validate, write it deployable"
    )
    manifest_build.add_argument("--template", default="deployment/deployment.template.json")
    manifest_build.add_argument("--out", default="out/deployment.json")
    manifest_build.add_argument("--bundle", help="bundle the inference image bakes in (its version tags the image)")
    manifest_build.add_argument("--registry", default="", help="image registry prefix, e.g. myacr.azurecr.io")
    manifest_build.add_argument("--modules-dir", default="modules", help="where modules/<m>/module.json live")
    manifest_build.add_argument("--var", action="append", metavar="NAME=VALUE", help="set a placeholder (wins)")
    manifest_build.set_defaults(func=cmd_manifest_build)

    edgehub = sub.add_parser("edgehub", help="run the offline edgeHub stand-in (Mosquitto per module, router, lake)")
    edgehub.add_argument("--deployment", default="deployment/deployment.template.json")
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

    sink = sub.add_parser(
        "sink", help="run the local IoT Hub: an MQTT broker the stand-in sends $upstream to, and the lake"
    )
    sink.add_argument("--listen", default="127.0.0.1:1884", metavar="HOST:PORT", help="hub broker address")
    sink.add_argument("--lake", default="out/lake", help="telemetry lake directory")
    sink.add_argument("--state-dir", default="out/sink", help="broker persistence and logs")
    sink.add_argument("--flush-every-s", type=float, default=5.0, help="write buffered rows at least this often")
    sink.add_argument("--health-file", help="touch this file while healthy (container HEALTHCHECK)")
    sink.set_defaults(func=cmd_sink)

    up = sub.add_parser(
        "up", help="run the whole edge locally (field broker, edgeHub stand-in, sensor, inference, lake sink)"
    )
    up.add_argument("--bundle", required=True, help="model bundle the inference module serves")
    up.add_argument("--simulate", metavar="PROFILE", help="also run the device simulator with this profile")
    up.add_argument("--duration-s", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--deployment", default="deployment/deployment.template.json")
    up.add_argument("--workdir", default="out/edge")
    up.add_argument("--lake", default="out/lake")
    up.add_argument("--edge-device", default="edge1")
    up.add_argument("--ip-base", default="127.0.78", help="modules connect to <ip-base>.10, .11, ... port 8883")
    up.add_argument("--field-port", type=int, default=1883, help="field MQTT broker port on 127.0.0.1")
    up.add_argument("--dashboard-port", type=int, default=5006, help="live dashboard on http://127.0.0.1:PORT/")
    up.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    up.set_defaults(func=cmd_up)

    score = sub.add_parser("score", help="batch-score history with a bundle on Spark")
    score.add_argument("--history", required=True)
    score.add_argument("--bundle", required=True, help="bundle directory (features and fallback)")
    score.add_argument("--out", required=True, help="output parquet directory")
    score.add_argument(
        "--model-uri", help="score through mlflow.pyfunc.spark_udf, e.g. models:/edgefleet-fleet@champion"
    )
    score.add_argument("--master", default="local[*]")
    score.set_defaults(func=cmd_score)

    demo = sub.add_parser("demo", help="the whole loop: history, Spark training, the edge with the simulator, retrain")
    demo.add_argument("--workdir", default="out/demo")
    demo.add_argument("--devices", type=int, default=200)
    demo.add_argument("--rows", type=int, default=400)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--edge-seconds", type=float, default=60.0, help="how long the edge runs before the retrain")
    demo.add_argument("--rate", type=float, default=2.0, help="readings per second per simulated device")
    demo.add_argument("--dashboard-port", type=int, default=5006, help="live dashboard on http://127.0.0.1:PORT/")
    demo.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    demo.set_defaults(func=cmd_demo)
    return parser


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
