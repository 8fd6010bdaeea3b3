"""Chaos test of the edge: kill -9 its processes at random under QoS 1 load, then count what was lost.

Prints markdown tables (paste them into README's reliability section), then one JSON object on
the last line. Exit status 1 when a reading was lost or fewer kills than asked were done. The
harness is `benchmarks/edge/chaos.py`; `tests/chaos/` runs it in `make test`.

Usage:
    python benchmarks/chaos.py --kills 20 --seed 1
    EDGEFLEET_CHAOS_SEED=7 python benchmarks/chaos.py          # reproduce a test run's schedule
    python benchmarks/chaos.py --kills 5 --targets sensor,inference --workdir /tmp/chaos --keep
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.edge` is found from the repository root

from benchmarks.edge.bundles import build_bundle  # noqa: E402
from benchmarks.edge.chaos import TARGETS, ChaosConfig, report_json, run_chaos, seed_from_env  # noqa: E402


def say(message: str) -> None:
    """Print one progress line right away."""
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chaos test once and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: $EDGEFLEET_CHAOS_SEED, else 1")
    parser.add_argument("--rate", type=float, default=150.0, help="readings per second")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: train a small one)")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs, lake)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    config = ChaosConfig(
        kills=args.kills,
        seed=args.seed if args.seed is not None else seed_from_env(1),
        rate_per_s=args.rate,
        targets=targets,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-chaos-"))
    try:
        bundle = args.bundle
        if bundle is None:
            say("training a small bundle")
            bundle = build_bundle(workdir, n_devices=6, rows=240, threshold=1.0).path
        report = run_chaos(workdir / "edge", bundle, config, say=say)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    say("")
    say(report.markdown())
    say(json.dumps(report_json(report)))
    return 0 if report.lost == 0 and len(report.kills) >= args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
