"""Run a training job: `python -m cloud_training train|retrain|score ...` (the training image's entry point).

The flags, defaults and exit codes are those of `edgefleet train/retrain/score`; progress goes to the
log and the summary is plain text (`--json` adds the same JSON document). A user mistake prints one
line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from cloud_training.cli import (
    JOB_HELP,
    RETRAIN_DESCRIPTION,
    add_retrain_arguments,
    add_score_arguments,
    add_train_arguments,
    json_line,
    retrain_document,
    retrain_settings,
    run_score,
    train_settings,
    training_document,
)
from cloud_training.cluster import job_failure
from cloud_training.job_log import ProgressLog, retrain_summary, score_summary, training_summary
from edgefleet.errors import EdgefleetError, validation_message
from edgefleet.process import configure_logging

PROG = "python -m cloud_training"
CRON_EXAMPLE = f"{PROG} retrain --lake /lake --bundle /bundle --since 24h --out /out/bundle-next"


def run_train(args: argparse.Namespace) -> int:
    """Train, export and register a bundle; print its summary."""
    from cloud_training.pipeline import run_training

    outcome = run_training(train_settings(args), None if args.quiet else ProgressLog("training devices"))
    print(training_summary(outcome))
    if args.json:
        print(json_line(training_document(outcome)))
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    """Retrain from the lake, merge and register the next bundle; print its summary."""
    from cloud_training.retrain import run_retrain as retrain

    outcome = retrain(retrain_settings(args), None if args.quiet else ProgressLog("retraining devices"))
    print(retrain_summary(outcome))
    if args.json:
        print(json_line(retrain_document(outcome)))
    return 0


def run_batch_score(args: argparse.Namespace) -> int:
    """Score history with a bundle; print how many rows were written."""
    print(score_summary(run_score(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser: one subcommand per job, with the flags `edgefleet` gives it."""
    parser = argparse.ArgumentParser(prog=PROG, description="Training jobs: per-device models on Spark and MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_job(sub, "train", add_train_arguments, run_train)
    retrain = _add_job(sub, "retrain", add_retrain_arguments, run_retrain)
    retrain.description, retrain.epilog = RETRAIN_DESCRIPTION, f"cron, daily: {CRON_EXAMPLE}"
    _add_job(sub, "score", add_score_arguments, run_batch_score)
    return parser


def _add_job(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    job = sub.add_parser(name, help=JOB_HELP[name])
    add_arguments(job)
    job.set_defaults(run=run)
    return job


def main(argv: Sequence[str] | None = None) -> int:
    """Run one job; a user mistake prints a message and exits 2, never a traceback."""
    args = build_parser().parse_args(argv)
    # Our progress and phases at INFO; Spark's and MLflow's chatter only from WARNING, unless asked.
    configure_logging("DEBUG" if args.verbose else "WARNING")
    if not args.verbose:
        logging.getLogger("cloud_training").setLevel(logging.INFO)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except EdgefleetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"{PROG}: error: {validation_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        failure = job_failure(err)  # a lost cluster or tracking server: one line, not a traceback
        if failure is None:
            raise
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
