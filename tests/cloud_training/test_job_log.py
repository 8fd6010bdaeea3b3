"""What `python -m cloud_training` reports to a job log: progress in steps, a few plain summary lines."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from cloud_training.job_log import ProgressLog, retrain_summary
from cloud_training.retrain import RetrainOutcome
from cloud_training.tracking import RegisteredBundle
from edgefleet.bundle import read_manifest


def test_progress_is_logged_once_per_tenth_of_the_tasks_not_on_every_poll(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloud_training")
    progress = ProgressLog("training devices")
    for done in [0, 0, 1, 2, 2, 10, 11, 19, 20, 20]:
        progress(done, 20)
    assert [r.getMessage() for r in caplog.records] == [
        "training devices: 0 of 20 tasks done",
        "training devices: 2 of 20 tasks done",
        "training devices: 10 of 20 tasks done",
        "training devices: 19 of 20 tasks done",
        "training devices: 20 of 20 tasks done",
    ]


def test_progress_starts_over_when_spark_reports_a_new_stage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloud_training")
    progress = ProgressLog("retraining devices")
    progress(1, 1)
    progress(0, 4)
    assert [r.getMessage() for r in caplog.records][-1] == "retraining devices: 0 of 4 tasks done"


def retrain_outcome(bundle: Path, *, alias_moved: bool) -> RetrainOutcome:
    summary = {
        "devices": 12,
        "picked": 3,
        "picked_by_reason": {"drift": 2, "new_data": 1},
        "improved": 2 if alias_moved else 0,
        "kept_champion": 1 if alias_moved else 3,
        "fresh_mse_champion": 0.5,
        "fresh_mse_merged": 0.25 if alias_moved else None,
    }
    return RetrainOutcome(
        decisions=pd.DataFrame(),
        bundle_dir=Path("out/bundle-next"),
        bundle_version="v2",
        manifest=read_manifest(bundle),
        champion_version="v1",
        cutoff=datetime(2026, 11, 20, 6, 0, tzinfo=UTC),
        alias_moved=alias_moved,
        manifest_path=Path("out/bundle-next.deployment.json"),
        summary=summary,
        timings_s={"end_to_end_s": 42.0, "jvm_start_s": 3.0},
        run_id="run-1",
        registered=RegisteredBundle(model_uri="models:/fleet/7", name="fleet", version="7", champion=alias_moved),
    )


def test_retrain_summary_names_the_picks_the_new_bundle_and_whether_the_alias_moved(small_bundle: Path) -> None:
    text = retrain_summary(retrain_outcome(small_bundle, alias_moved=True))
    assert "devices 12, picked 3: 2 drift, 1 new_data" in text
    assert "mean fresh hold-out MSE 0.5 -> 0.25" in text
    assert "bundle v2 written to out/bundle-next (champion was v1; fresh rows since 2026-11-20 06:00 UTC)" in text
    assert "registered model fleet version 7: alias champion moved here" in text


def test_retrain_summary_says_the_alias_stayed_when_nothing_improved(small_bundle: Path) -> None:
    text = retrain_summary(retrain_outcome(small_bundle, alias_moved=False))
    assert "mean fresh hold-out MSE 0.5 -> -" in text
    assert "alias champion not moved (no improvement)" in text
