"""The inference service over an in-memory edgeHub: routing, dead letters and bundle reloads."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from edgefleet.bundle import (
    BundleManifest,
    Correction,
    DeviceEntry,
    FeatureStats,
    FleetEntry,
    HoldoutMetrics,
    ModelFile,
    sha256_bytes,
)
from edgefleet.endpoints import DEADLETTER, PREDICTIONS, TELEMETRY
from edgefleet.messages import BATCH_SCHEMA
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.modules.fakes import FakeModuleClient, SentMessage

pytestmark = pytest.mark.fast

FEATURES = ("temperature_c", "humidity_pct")
DEVICE_VALUE = 100.0  # what every device model predicts
FLEET_VALUE = 7.0  # what the fleet model predicts
# dev-corrected: the fleet model plus 0.5 + 0.1 x temperature_c (21.0 in `reading`): 7.0 + 2.6.
CORRECTION = Correction(intercept=0.5, coef=(0.1, 0.0))
CORRECTED_VALUE = 9.6


def _model_file(folder: Path, rel: str, value: float) -> ModelFile:
    model = DummyRegressor(strategy="constant", constant=value).fit([[0.0, 0.0]], [value])
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    data = buffer.getvalue()
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(data)
    return ModelFile(path=rel, sha256=sha256_bytes(data), size_bytes=len(data))


def _holdout(mse: float) -> HoldoutMetrics:
    return HoldoutMetrics(mse=mse, mae=mse, r2=0.5, n=50)


def write_tiny_bundle(folder: Path, version: str) -> Path:
    """Write a bundle of constant models: one good device, one poor, one skipped, one fleet_corrected, and the fleet."""
    folder.mkdir(parents=True, exist_ok=True)
    trained = {"status": "trained", "family": "constant", "n_train": 100, "n_holdout": 50}
    devices = {
        "dev-own": DeviceEntry(
            **trained,
            joblib=_model_file(folder, "models/dev-own.joblib", DEVICE_VALUE),
            holdout=_holdout(1.0),
            fleet_holdout=_holdout(2.0),
        ),
        # Its own model does worse than the fleet model on its hold-out: the fleet model serves it.
        "dev-poor": DeviceEntry(
            **trained,
            joblib=_model_file(folder, "models/dev-poor.joblib", DEVICE_VALUE),
            holdout=_holdout(5.0),
            fleet_holdout=_holdout(1.0),
        ),
        "dev-skipped": DeviceEntry(status="skipped", reason="too_few_rows"),
        # Training chose the fleet model plus a correction of its own; its hold-out is that kind's error.
        "dev-corrected": DeviceEntry(
            status="trained",
            kind="fleet_corrected",
            correction=CORRECTION,
            n_train=100,
            n_holdout=50,
            holdout=_holdout(0.25),
            fleet_holdout=_holdout(2.0),
        ),
    }
    manifest = BundleManifest(
        bundle_version=version,
        created_at="2026-11-21T00:00:00Z",
        features=FEATURES,
        target="energy_kwh",
        libraries={},
        feature_stats={name: FeatureStats(mean=20.0, std=5.0, p01=5.0, p99=35.0) for name in FEATURES},
        fleet=FleetEntry(
            family="constant",
            joblib=_model_file(folder, "fleet.joblib", FLEET_VALUE),
            n_train=300,
            holdout=_holdout(2.0),
        ),
        devices=devices,
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


def reading(device_id: str, seq: int, **features: float) -> dict[str, Any]:
    """Return one telemetry object (both features unless some are given)."""
    ts = datetime(2026, 11, 21, tzinfo=UTC) + timedelta(seconds=seq)
    return {
        "schema": "edgefleet.telemetry/1",
        "device_id": device_id,
        "seq": seq,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "features": features or {"temperature_c": 21.0, "humidity_pct": 40.0},
    }


def batch(*readings: dict[str, Any]) -> dict[str, Any]:
    return {"schema": BATCH_SCHEMA, "readings": list(readings)}


def predictions(client: FakeModuleClient, count: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Wait for `count` predictions in total; return them by (device, seq)."""

    def readings(sent: list[SentMessage]) -> list[dict[str, Any]]:
        return [item for message in sent for item in message.json()["readings"]]

    sent = client.wait_until(PREDICTIONS, lambda sent: len(readings(sent)) >= count)
    return {(item["device_id"], item["seq"]): item for item in readings(sent)}


@pytest.fixture(autouse=True)
def _keep_the_log_level() -> Iterator[None]:
    # The service sets the root level from the twin's logLevel: give the other tests theirs back.
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def settings(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(
        bundle_dir=write_tiny_bundle(tmp_path / "bundle", "v1"),
        state_dir=tmp_path / "state",
        edge_device="edge-test",
        report_interval_s=60.0,
    )


@pytest.fixture
def client() -> FakeModuleClient:
    return FakeModuleClient()


@pytest.fixture
def service(settings: InferenceSettings, client: FakeModuleClient) -> Iterator[InferenceService]:
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    yield service
    service.stop()


def test_inference_serves_a_known_device_with_its_own_model_and_others_with_the_fleet_model_saying_why(service, client):
    client.deliver(
        TELEMETRY,
        batch(
            reading("dev-own", 1),
            reading("dev-poor", 1),
            reading("dev-skipped", 1),
            reading("never-seen", 1),
            reading("dev-own", 2, temperature_c=21.0),  # humidity missing
        ),
    )

    served = {key: item["prediction"] for key, item in predictions(client, 5).items()}
    assert served[("dev-own", 1)] == {
        "value": DEVICE_VALUE,
        "model": "device",
        "model_version": "v1",
        "fallback_reason": None,
    }
    reasons = {key: (p["model"], p["fallback_reason"], p["value"]) for key, p in served.items() if key[1] == 1}
    assert reasons[("dev-poor", 1)] == ("fleet", "poor_model", FLEET_VALUE)
    assert reasons[("dev-skipped", 1)] == ("fleet", "no_model", FLEET_VALUE)
    assert reasons[("never-seen", 1)] == ("fleet", "no_model", FLEET_VALUE)
    assert (served[("dev-own", 2)]["model"], served[("dev-own", 2)]["fallback_reason"]) == ("fleet", "missing_features")


def test_readings_that_arrive_while_their_device_model_loads_are_answered_in_the_order_they_came(
    service, client, monkeypatch
):
    # The loader caches the model, then says so; hold it in between, where a later message finds
    # the model ready before the readings that waited for it are answered.
    cached, release = threading.Event(), threading.Event()
    load = service.predictor.load

    def load_then_hold(device_id: str) -> str | None:
        error = load(device_id)
        cached.set()
        release.wait(10.0)
        return error

    monkeypatch.setattr(service.predictor, "load", load_then_hold)
    client.deliver(TELEMETRY, reading("dev-own", 1))
    assert cached.wait(10.0)
    client.deliver(TELEMETRY, batch(reading("dev-own", 2), reading("never-seen", 2)))
    deadline = time.monotonic() + 10.0
    while service.stats()["served_by_model"].get("fleet", 0) < 1:  # the second message's round is done
        assert time.monotonic() < deadline, "the second message was never answered"
        time.sleep(0.01)
    release.set()

    sent = client.wait_until(PREDICTIONS, lambda sent: sum(len(m.json()["readings"]) for m in sent) >= 3)
    order = [item["seq"] for m in sent for item in m.json()["readings"] if item["device_id"] == "dev-own"]
    assert order == [1, 2]


def test_inference_serves_a_fleet_corrected_device_by_the_fleet_model_plus_its_correction_and_counts_each_kind(
    service, client
):
    client.deliver(
        TELEMETRY,
        batch(
            reading("dev-corrected", 1),
            reading("dev-corrected", 2),
            reading("dev-corrected", 3, temperature_c=21.0),  # humidity missing: the plain fleet model
            reading("dev-own", 1),
            reading("never-seen", 1),
        ),
    )

    served = {key: item["prediction"] for key, item in predictions(client, 5).items()}
    assert served[("dev-corrected", 1)] == {
        "value": CORRECTED_VALUE,
        "model": "fleet_corrected",
        "model_version": "v1",
        "fallback_reason": None,
    }
    assert served[("dev-corrected", 2)]["value"] == CORRECTED_VALUE
    third = served[("dev-corrected", 3)]
    assert (third["model"], third["fallback_reason"], third["value"]) == ("fleet", "missing_features", FLEET_VALUE)
    stats = service.stats()
    assert stats["served_by_model"] == {"device": 1, "fleet": 2, "fleet_corrected": 2}
    assert stats["device_model"] == 1 and stats["fallbacks"] == {"missing_features": 1, "no_model": 1}
    assert service.reset()["served_by_model"]["fleet_corrected"] == 2
    assert service.stats()["served_by_model"]["fleet_corrected"] == 0


def test_predictions_name_the_edge_device_and_leave_as_batches(service, client):
    client.deliver(TELEMETRY, reading("never-seen", 3))

    [message] = client.wait_sent(PREDICTIONS, 1)
    assert message.properties == {"schema": BATCH_SCHEMA}
    [item] = message.json()["readings"]
    assert item["edge"]["edge_device"] == "edge-test" and item["edge"]["latency_ms"] >= 0


def test_raising_the_poor_model_threshold_gives_a_poor_device_its_own_model_back(service, client):
    client.patch_desired({"poorModelThreshold": 10.0})
    client.deliver(TELEMETRY, reading("dev-poor", 1))

    prediction = predictions(client, 1)[("dev-poor", 1)]["prediction"]
    assert (prediction["model"], prediction["value"]) == ("device", DEVICE_VALUE)
    assert client.reported["poorModelThreshold"] == 10.0


def test_a_message_that_is_not_json_is_dead_lettered_with_its_reason(service, client):
    client.deliver(TELEMETRY, b"{not json")

    [dead] = client.wait_sent(DEADLETTER, 1)
    assert dead.properties["reason"] == "not_json"
    assert (dead.json()["source"], dead.json()["payload"]) == ("inference/telemetry", "{not json")
    assert client.sent(PREDICTIONS) == []


def test_a_bad_reading_is_dead_lettered_and_its_neighbours_in_the_batch_are_still_predicted(service, client):
    client.deliver(TELEMETRY, batch(reading("never-seen", 1), {**reading("never-seen", 2), "seq": -2}))

    [dead] = client.wait_sent(DEADLETTER, 1)
    assert dead.json()["reason"] == "bad_seq"
    assert list(predictions(client, 1)) == [("never-seen", 1)]


def test_reload_swaps_in_the_new_bundle_version_for_the_next_readings(service, client, settings):
    client.deliver(TELEMETRY, reading("never-seen", 1))
    predictions(client, 1)
    write_tiny_bundle(settings.bundle_dir, "v2")

    response = client.call_method("reload")

    assert (response.status, response.payload["bundleVersion"], response.payload["previous"]) == (200, "v2", "v1")
    client.deliver(TELEMETRY, batch(reading("never-seen", 2), reading("dev-own", 2)))
    served = predictions(client, 3)
    assert served[("never-seen", 2)]["prediction"]["model_version"] == "v2"
    assert served[("dev-own", 2)]["prediction"]["model_version"] == "v2"
    assert client.reported["bundleVersion"] == "v2"


def test_reload_refuses_a_bundle_whose_files_do_not_match_its_manifest_and_keeps_the_old_one(service, client, settings):
    write_tiny_bundle(settings.bundle_dir, "v2")
    tampered = settings.bundle_dir / "fleet.joblib"
    tampered.write_bytes(tampered.read_bytes() + b"\x00")

    response = client.call_method("reload")

    assert response.status == 409
    assert "fleet.joblib" in response.payload["error"] and response.payload["bundleVersion"] == "v1"
    client.deliver(TELEMETRY, reading("never-seen", 1))
    assert predictions(client, 1)[("never-seen", 1)]["prediction"]["model_version"] == "v1"


def test_an_unknown_direct_method_answers_404_naming_the_known_ones(service, client):
    response = client.call_method("restart")

    assert response.status == 404
    assert "reload" in response.payload["error"] and "stats" in response.payload["error"]


def test_features_the_bundle_does_not_know_are_counted_named_in_the_twin_and_left_out_of_the_prediction(
    service, client
):
    extra = [
        reading("dev-own", seq, temperature_c=21.0, humidity_pct=40.0, **{f"junk_{seq}": 1.0}) for seq in range(30)
    ]
    client.deliver(TELEMETRY, batch(reading("dev-own", 100), *extra))

    served = predictions(client, 31)
    assert all(set(item["features"]) == set(FEATURES) for item in served.values())
    assert served[("dev-own", 5)]["prediction"]["model"] == "device"  # nothing missing: its own model
    stats = service.stats()
    assert stats["unknown_features"] == 30
    names = service.reported()["unknownFeatureNames"]
    assert names == [f"junk_{seq}" for seq in range(10)]  # the first few, bounded


def test_a_reading_with_none_of_the_bundles_features_is_dead_lettered_as_having_no_features(service, client):
    client.deliver(TELEMETRY, batch(reading("dev-own", 1, pressure_kpa=101.0), reading("dev-own", 2)))

    [dead] = client.wait_sent(DEADLETTER, 1)
    assert dead.json()["reason"] == "no_features"
    assert "temperature_c" in dead.json()["detail"]
    assert list(predictions(client, 1)) == [("dev-own", 2)]
    assert service.stats()["unknown_features"] == 1
