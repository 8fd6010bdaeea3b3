"""The inference service when models fail: each failure costs its own reading, never the round."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.endpoints import ALERTS, DEADLETTER, TELEMETRY
from modules.inference import service as service_module
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.modules.fakes import FakeModuleClient
from tests.modules.inference.faulty_bundle import DEVICE_VALUE, FLEET_VALUE, HUGE, write_faulty_bundle
from tests.modules.inference.test_service import batch, predictions, reading

pytestmark = pytest.mark.fast

HEALTHY = ("dev-a", "dev-b")
SENTINEL = {"temperature_c": HUGE, "humidity_pct": 40.0}  # both features: the device's own model is asked


@pytest.fixture(autouse=True)
def _keep_the_log_level() -> Iterator[None]:
    # The service sets the root level from the twin's logLevel: give the other tests theirs back.
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def _settings(tmp_path: Path, *, fleet_fails: bool = False) -> InferenceSettings:
    return InferenceSettings(
        bundle_dir=write_faulty_bundle(tmp_path / "bundle", fleet_fails=fleet_fails),
        state_dir=tmp_path / "state",
        edge_device="edge-test",
        report_interval_s=60.0,
    )


def _start(settings: InferenceSettings, client: FakeModuleClient) -> Iterator[InferenceService]:
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    yield service
    service.stop()


@pytest.fixture
def client() -> FakeModuleClient:
    return FakeModuleClient()


@pytest.fixture
def service(tmp_path: Path, client: FakeModuleClient) -> Iterator[InferenceService]:
    yield from _start(_settings(tmp_path), client)


@pytest.fixture
def fleet_failing(tmp_path: Path, client: FakeModuleClient) -> Iterator[InferenceService]:
    yield from _start(_settings(tmp_path, fleet_fails=True), client)


def _warm_up(client: FakeModuleClient, *devices: str) -> int:
    """Have each device's model loaded, so the next message is answered in one processing round."""
    client.deliver(TELEMETRY, batch(*(reading(device, 0) for device in devices)))
    predictions(client, len(devices))
    return len(devices)


def _neighbours(first_seq: int = 1) -> list[dict[str, Any]]:
    """Readings of the healthy devices, sent in the same message as the faulty one."""
    return [reading(device, seq) for device in HEALTHY for seq in range(first_seq, first_seq + 5)]


def _served(item: dict[str, Any]) -> tuple[str, str | None, float]:
    prediction = item["prediction"]
    return prediction["model"], prediction["fallback_reason"], prediction["value"]


def _dead(client: FakeModuleClient, count: int) -> list[dict[str, Any]]:
    return [message.json() for message in client.wait_sent(DEADLETTER, count)]


def test_a_sentinel_reading_that_makes_a_linear_model_predict_inf_gets_the_fleet_model_and_its_neighbours_their_own(
    service, client
):
    warm = _warm_up(client, *HEALTHY, "dev-linear")
    sentinel = reading("dev-linear", 2, **SENTINEL)
    client.deliver(TELEMETRY, batch(*_neighbours(), reading("dev-linear", 1), sentinel, reading("dev-linear", 3)))

    served = predictions(client, warm + 13)
    assert _served(served[("dev-linear", 2)]) == ("fleet", "model_error", FLEET_VALUE)
    assert all(_served(served[(device, seq)]) == ("device", None, DEVICE_VALUE) for device, seq in _neighbours_keys())
    assert {_served(served[("dev-linear", seq)])[:2] for seq in (1, 3)} == {("device", None)}
    stats = service.stats()
    assert (stats["model_errors"], stats["fallbacks"], stats["quarantined_devices"]) == (1, {"model_error": 1}, 0)
    assert client.sent(DEADLETTER) == []


def _neighbours_keys() -> list[tuple[str, int]]:
    return [(item["device_id"], item["seq"]) for item in _neighbours()]


def test_a_model_call_that_raises_for_one_reading_is_retried_per_reading_so_only_that_one_falls_back(service, client):
    warm = _warm_up(client, "dev-picky")
    rows = [reading("dev-picky", 1), reading("dev-picky", 2, **SENTINEL), reading("dev-picky", 3)]
    client.deliver(TELEMETRY, batch(*rows))

    served = predictions(client, warm + 3)
    assert [_served(served[("dev-picky", seq)]) for seq in (1, 2, 3)] == [
        ("device", None, DEVICE_VALUE),
        ("fleet", "model_error", FLEET_VALUE),
        ("device", None, DEVICE_VALUE),
    ]


def test_a_device_model_that_raises_at_predict_falls_back_and_is_quarantined_after_three_failures_with_one_alert(
    service, client
):
    warm = _warm_up(client, *HEALTHY)
    client.deliver(TELEMETRY, batch(*_neighbours(), *(reading("dev-broken", seq) for seq in range(1, 6))))
    predictions(client, warm + 10 + 5)
    client.deliver(TELEMETRY, batch(*(reading("dev-broken", seq) for seq in range(6, 9))))

    served = predictions(client, warm + 10 + 8)
    assert all(_served(served[key]) == ("device", None, DEVICE_VALUE) for key in _neighbours_keys())
    assert {_served(served[("dev-broken", seq)]) for seq in range(1, 9)} == {("fleet", "model_error", FLEET_VALUE)}
    [alert] = [message.json() for message in client.sent(ALERTS)]
    assert alert["kind"] == "model_error"
    assert "dev-broken" in alert["detail"] and "quarantined" in alert["detail"] and "features" in alert["detail"]
    stats = service.stats()
    # The first call fails all 5 readings; once quarantined, its model is not asked again.
    assert (stats["model_errors"], stats["model_failures"], stats["quarantined_devices"]) == (5, {"dev-broken": 5}, 1)
    assert service.reported()["quarantined"] == ["dev-broken"]
    assert client.sent(DEADLETTER) == []


def test_a_device_model_is_quarantined_only_after_three_failures_in_a_row(service, client):
    warm = _warm_up(client, "dev-linear")
    bad = SENTINEL
    for seq, features in enumerate([bad, bad, None, bad, bad], start=1):
        client.deliver(TELEMETRY, reading("dev-linear", seq, **(features or {})))
        predictions(client, warm + seq)

    assert service.stats()["quarantined_devices"] == 0
    client.deliver(TELEMETRY, reading("dev-linear", 6, **bad))
    predictions(client, warm + 6)
    client.deliver(TELEMETRY, reading("dev-linear", 7))
    served = predictions(client, warm + 7)
    assert _served(served[("dev-linear", 7)]) == ("fleet", "model_error", FLEET_VALUE)
    assert service.reported()["quarantined"] == ["dev-linear"]


def test_a_bundle_reload_gives_a_quarantined_device_its_model_back(service, client):
    warm = _warm_up(client, "dev-linear")
    client.deliver(TELEMETRY, batch(*(reading("dev-linear", seq, **SENTINEL) for seq in range(1, 4))))
    predictions(client, warm + 3)
    assert service.reported()["quarantined"] == ["dev-linear"]

    assert client.call_method("reload").status == 200
    client.deliver(TELEMETRY, reading("dev-linear", 4))

    assert _served(predictions(client, warm + 4)[("dev-linear", 4)])[:2] == ("device", None)
    assert service.reported()["quarantined"] == []


def test_when_the_fleet_model_fails_too_the_reading_is_dead_lettered_as_prediction_failed_and_nothing_else_is_lost(
    fleet_failing, client
):
    warm = _warm_up(client, *HEALTHY)
    client.deliver(TELEMETRY, batch(*_neighbours(), reading("dev-broken", 1), reading("never-seen", 1)))

    served = predictions(client, warm + 10)
    assert all(_served(served[key]) == ("device", None, DEVICE_VALUE) for key in _neighbours_keys())
    dead = {letter["payload"]: letter for letter in _dead(client, 2)}
    assert all(letter["reason"] == "prediction_failed" for letter in dead.values())
    broken = next(letter for payload, letter in dead.items() if '"dev-broken"' in payload)
    assert "device dev-broken" in broken["detail"] and "fleet model failed too" in broken["detail"]
    unknown = next(letter for payload, letter in dead.items() if '"never-seen"' in payload)
    assert "device never-seen" in unknown["detail"] and "no_model" in unknown["detail"]
    assert broken["source"] == "inference/telemetry"
    stats = fleet_failing.stats()
    assert stats["deadletters"] == {"prediction_failed": 2}
    assert stats["predictions"] == warm + 10


def test_a_reading_whose_prediction_cannot_be_encoded_is_dead_lettered_alone(service, client, monkeypatch):
    warm = _warm_up(client, *HEALTHY)
    encode = service_module.prediction_json_obj

    def encode_but_not_dev_b_3(reading_, info, edge):
        if (reading_.device_id, reading_.seq) == ("dev-b", 3):
            raise RuntimeError("encoder broke")
        return encode(reading_, info, edge)

    monkeypatch.setattr(service_module, "prediction_json_obj", encode_but_not_dev_b_3)
    client.deliver(TELEMETRY, batch(*_neighbours()))

    [dead] = _dead(client, 1)
    assert dead["reason"] == "internal_error" and "dev-b" in dead["detail"] and "encoder broke" in dead["detail"]
    served = predictions(client, warm + 9)
    assert set(served) - {(device, 0) for device in HEALTHY} == set(_neighbours_keys()) - {("dev-b", 3)}


def test_a_reading_the_drift_monitor_chokes_on_is_dead_lettered_alone(service, client):
    warm = _warm_up(client, *HEALTHY)
    drift = service._drift
    assert drift is not None
    observe = drift.observe

    def observe_but_not_dev_a_2(device_id, features, prediction, label, ts):
        if device_id == "dev-a" and ts.second == 2:
            raise ValueError("drift broke")
        return observe(device_id, features, prediction, label, ts)

    drift.observe = observe_but_not_dev_a_2  # type: ignore[method-assign]
    client.deliver(TELEMETRY, batch(*_neighbours()))

    [dead] = _dead(client, 1)
    assert dead["reason"] == "internal_error" and "drift broke" in dead["detail"]
    served = predictions(client, warm + 9)
    assert ("dev-a", 2) not in served and len(served) == warm + 9
