"""Per-row prediction outcomes and the quarantine of device models that keep failing."""

from __future__ import annotations

import pytest

from edgefleet.bundle import Route
from modules.inference.isolation import Quarantine, describe_error, predict_each
from modules.inference.predictor import Choice, Predictor
from tests.modules.inference.faulty_bundle import DEVICE_VALUE, HUGE, write_faulty_bundle

pytestmark = pytest.mark.fast

NORMAL = [21.0, 40.0]
SENTINEL = [HUGE, 40.0]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    bundle = write_faulty_bundle(tmp_path_factory.mktemp("faulty") / "bundle")
    return Predictor(bundle, cache_mb=16, mode="bundle", poor_model_threshold=1.0)


def _device(predictor: Predictor, device_id: str) -> tuple[object, Choice]:
    route = Route("device", device_id, None)
    predictor.load(device_id)
    return predictor.ready_model(route), Choice(route)


def test_a_row_a_float32_model_turns_into_inf_gets_the_reason_and_the_other_rows_their_values(predictor):
    model, choice = _device(predictor, "dev-linear")

    normal, sentinel = predict_each(predictor, model, choice, [NORMAL, SENTINEL])

    assert isinstance(normal, float)
    assert sentinel == "the model predicted inf"


def test_a_call_that_raises_is_asked_again_row_by_row(predictor):
    model, choice = _device(predictor, "dev-picky")

    outcomes = predict_each(predictor, model, choice, [NORMAL, SENTINEL, NORMAL])

    assert outcomes == [DEVICE_VALUE, "ValueError: input out of range", DEVICE_VALUE]


def test_a_model_expecting_other_features_fails_every_row_with_the_error(predictor):
    model, choice = _device(predictor, "dev-broken")

    outcomes = predict_each(predictor, model, choice, [NORMAL, NORMAL])

    assert len(outcomes) == 2
    assert all(isinstance(o, str) and o.startswith("ValueError") and "3 features" in o for o in outcomes)


def test_a_device_is_quarantined_on_its_third_failure_in_a_row_once():
    quarantine = Quarantine(limit=3)

    assert quarantine.record("dev-1", ["boom", "boom"]) is None
    assert quarantine.record("dev-1", [1.0, "late"]) is None  # an answer breaks the run
    assert quarantine.record("dev-1", ["again", "third"]) == "third"
    assert quarantine.record("dev-1", ["more"]) is None  # already quarantined: no second alert

    assert quarantine.quarantined() == ["dev-1"]
    assert quarantine.failures(10) == {"dev-1": 6}


def test_resetting_the_counts_keeps_the_quarantine_and_the_running_streaks():
    quarantine = Quarantine(limit=2)
    quarantine.record("dev-1", ["a", "b"])
    quarantine.record("dev-2", ["a"])

    quarantine.reset_counts()

    assert quarantine.failures(10) == {}
    assert quarantine.quarantined() == ["dev-1"]
    assert quarantine.record("dev-2", ["b"]) == "b"


def test_failures_lists_the_most_failing_models_first():
    quarantine = Quarantine(limit=100)
    quarantine.record("dev-1", ["x"])
    quarantine.record("dev-2", ["x", "x", "x"])
    quarantine.record("dev-3", ["x", "x"])

    assert quarantine.failures(2) == {"dev-2": 3, "dev-3": 2}


def test_an_error_text_is_short_and_always_encodable():
    text = describe_error(ValueError("bad feature \ud800" + "x" * 1000))

    assert text.startswith("ValueError: bad feature \\ud800") and len(text) <= 310
    text.encode("utf-8")
