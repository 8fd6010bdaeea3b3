"""The last accepted desired set, kept in STATE_DIR: written owner-only, read back, used when the twin's is rejected."""

from __future__ import annotations

import json
import stat

import pytest

from edgefleet.desired import InferenceDesired, SensorDesired
from edgefleet.field import FIELD_TOPIC_FILTER
from modules.runtime import LastGoodDesired, desired_at_start

pytestmark = pytest.mark.fast

GOOD = {"batchWindowMs": 50, "maxBatchBytes": 3900, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}


def test_the_last_good_set_is_written_owner_only_and_reads_back(tmp_path):
    store = LastGoodDesired(tmp_path / "state")
    store.save(SensorDesired.model_validate(GOOD))

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == GOOD
    assert list(store.path.parent.iterdir()) == [store.path]  # no temporary file left behind


def test_saving_again_replaces_the_set_and_tightens_a_loose_file_mode(tmp_path):
    store = LastGoodDesired(tmp_path)
    store.path.write_text("{}", encoding="utf-8")
    store.path.chmod(0o644)
    store.save(SensorDesired.model_validate({**GOOD, "enabled": False}))

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert (store.load() or {})["enabled"] is False


def test_nothing_saved_or_an_unreadable_file_reads_as_none(tmp_path):
    store = LastGoodDesired(tmp_path)
    assert store.load() is None
    store.path.write_text("{half", encoding="utf-8")
    assert store.load() is None


def test_an_accepted_twin_at_start_is_used_and_saved(tmp_path):
    store = LastGoodDesired(tmp_path)
    start = desired_at_start(SensorDesired, {**GOOD, "$version": 3}, store)

    assert start.error is None and start.desired is not None
    assert start.desired.batch_window_ms == 50
    assert store.load() == GOOD


def test_a_rejected_twin_at_start_runs_with_the_last_good_set_and_says_so(tmp_path):
    store = LastGoodDesired(tmp_path)
    store.save(SensorDesired.model_validate(GOOD))
    start = desired_at_start(SensorDesired, {**GOOD, "enabled": "no", "fieldTopic": None}, store)

    assert start.desired == SensorDesired.model_validate(GOOD)
    assert start.error is not None
    assert "enabled" in start.error and "fieldTopic" in start.error and "last good values" in start.error
    assert store.load() == GOOD  # the rejected set does not replace it


def test_a_rejected_twin_with_nothing_saved_leaves_no_values_and_says_how_to_fix_it(tmp_path):
    start = desired_at_start(InferenceDesired, {"poorModelThreshold": "0.5"}, LastGoodDesired(tmp_path))

    assert start.desired is None
    assert start.error is not None and "poorModelThreshold" in start.error and "fix the deployment" in start.error


def test_a_saved_set_the_schema_now_rejects_is_not_used(tmp_path):
    store = LastGoodDesired(tmp_path)
    store.path.write_text(json.dumps({**GOOD, "enabled": "yes"}), encoding="utf-8")
    start = desired_at_start(SensorDesired, {"enabled": True}, store)

    assert start.desired is None and start.error is not None
