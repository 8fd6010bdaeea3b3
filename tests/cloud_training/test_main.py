"""`python -m cloud_training`, the training image's entry point, as a job runner runs it: a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_training.__main__ import build_parser as job_parser
from edgefleet.history import write_history
from edgefleet_cli.cli import build_parser as edgefleet_parser
from simulator.history import HistorySpec, generate_history
from tests.edge_fixtures import REPO


def run(module: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m module args` as a user's shell would: no MLflow URI or Spark master inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARK_MASTER"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """Return the parser of subcommand `name`."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parser_of: dict[str, argparse.ArgumentParser] = subparsers.choices
    return parser_of[name]


def options(parser: argparse.ArgumentParser) -> dict[str, tuple[object, ...]]:
    """Return each option string with what it accepts: default, choices, type, whether required."""
    return {
        option: (action.dest, action.default, action.choices, action.type, action.required, action.nargs)
        for action in parser._actions
        for option in action.option_strings
    }


def test_train_writes_a_bundle_that_edgefleet_bundle_verify_accepts(tmp_path: Path) -> None:
    history = generate_history(HistorySpec(n_devices=4, rows_per_device=80, seed=5))
    write_history(history, tmp_path / "history.parquet")
    job = run(
        "cloud_training", "train", "--history", "history.parquet", "--out", "bundle",
        "--tracking", "off", "--master", "local[1]", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-2000:]
    summary, document = job.stdout.rsplit("\n", 2)[:2]
    assert "written to bundle" in summary and "devices 4: " in job.stdout
    assert json.loads(document)["summary"]["devices"] == 4
    assert set(json.loads(document)) == {"summary", "timings_s"}
    assert not (tmp_path / "mlflow.db").exists()  # --tracking off
    verify = run("edgefleet_cli", "bundle", "verify", tmp_path / "bundle", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--history", "h.parquet", "--families", "xgboost"], "use some of: ridge, random_forest"),
        (["retrain", "--lake", "lake", "--bundle", "bundle", "--since", "last tuesday"], "--since 'last tuesday'"),
        (["retrain", "--lake", "lake", "--bundle", "no-such-bundle"], "no-such-bundle"),
        (["train", "--history", "h.parquet", "--min-rows", "many"], "argument --min-rows: invalid int value"),
    ],
    ids=["unknown-family", "unreadable-since", "missing-bundle", "not-a-number"],
)
def test_a_bad_flag_value_exits_2_with_one_message_and_no_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    job = run("cloud_training", *args, cwd=tmp_path)
    assert job.returncode == 2
    assert message in job.stderr and "Traceback" not in job.stderr
    assert job.stdout == ""


@pytest.mark.parametrize("name", ["train", "retrain", "score"])
def test_each_job_takes_the_same_options_as_its_edgefleet_subcommand(name: str) -> None:
    ours = options(subcommand(job_parser(), name))
    theirs = options(subcommand(edgefleet_parser(), name))
    assert set(ours) == set(theirs)
    assert ours == theirs  # and the same defaults, choices and types


@pytest.mark.parametrize("name", ["train", "retrain", "score"])
def test_help_of_each_job_lists_every_option_of_its_edgefleet_subcommand(tmp_path: Path, name: str) -> None:
    job = run("cloud_training", name, "--help", cwd=tmp_path)
    assert job.returncode == 0
    assert job.stdout.startswith(f"usage: python -m cloud_training {name}")
    assert [o for o in options(subcommand(edgefleet_parser(), name)) if o not in job.stdout] == []
