"""The `edgefleet train` and `edgefleet score` subcommands: registered here, progress bar and summary in rich.

Their flags and the settings they make are cloud_training's (`cloud_training.cli`), shared with
`python -m cloud_training`.
"""

from __future__ import annotations

import argparse

from cloud_training.cli import (
    JOB_HELP,
    add_score_arguments,
    add_train_arguments,
    json_line,
    run_score,
    train_settings,
    training_document,
)

__all__ = ["cmd_score", "cmd_train", "register_score", "register_train"]


def register_train(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `train` subcommand to the `edgefleet` parser and return it."""
    train = subparsers.add_parser("train", help=JOB_HELP["train"])
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)
    return train


def register_score(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `score` subcommand to the `edgefleet` parser and return it."""
    score = subparsers.add_parser("score", help=JOB_HELP["score"])
    add_score_arguments(score)
    score.set_defaults(func=cmd_score)
    return score


def cmd_train(args: argparse.Namespace) -> int:
    """Run `edgefleet train` and print its summary."""
    from cloud_training.pipeline import run_training
    from edgefleet_cli.console import console, render_training, training_progress

    def say_choice(line: str) -> None:  # one line, however narrow the terminal; `local[2]` is no markup
        console.print(line, markup=False, soft_wrap=True)

    settings = train_settings(args)
    with training_progress(enabled=not args.quiet) as on_progress:
        outcome = run_training(settings, on_progress, on_choice=say_choice)
    render_training(outcome)
    if args.json:
        print(json_line(training_document(outcome)))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Run `edgefleet score`: predictions for every history row, written as parquet."""
    from cloud_training.job_log import score_summary

    print(score_summary(run_score(args)))
    return 0
