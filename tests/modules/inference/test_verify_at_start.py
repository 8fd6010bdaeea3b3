"""The bundle is verified while the module starts: nothing leaves before it matches; a refused one sends nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.bundle import BundleManifest, BundleProblem
from edgefleet.endpoints import PREDICTIONS, TELEMETRY
from edgefleet.errors import BundleError
from edgefleet.journal import SUFFIX
from modules.inference import bundle as inference_bundle
from modules.inference.inbox import JOURNAL_DIR
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.edge_fixtures import wait_for
from tests.modules.fakes import FakeModuleClient
from tests.modules.inference.test_service import batch, predictions, reading, write_tiny_bundle

pytestmark = pytest.mark.fast


@pytest.fixture
def settings(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(
        bundle_dir=write_tiny_bundle(tmp_path / "bundle", "v1"),
        state_dir=tmp_path / "state",
        edge_device="edge-test",
        report_interval_s=60.0,
    )


@pytest.fixture
def slow_verify(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold the start's verification until the test sets the returned event."""
    finish = threading.Event()
    real_verify = inference_bundle.verify_bundle

    def verify(bundle_dir: Path, manifest: BundleManifest | None = None) -> list[BundleProblem]:
        finish.wait(10.0)
        return real_verify(bundle_dir, manifest)

    monkeypatch.setattr(inference_bundle, "verify_bundle", verify)
    yield finish
    finish.set()


def _tamper(bundle_dir: Path, rel: str) -> None:
    path = bundle_dir / rel
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")


def _segments(settings: InferenceSettings) -> list[Path]:
    return sorted((settings.state_dir / JOURNAL_DIR).glob(f"*{SUFFIX}"))


def test_readings_are_answered_while_the_bundle_is_verified_and_sent_once_it_matches(settings, slow_verify):
    client = FakeModuleClient()
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    try:
        client.deliver(TELEMETRY, batch(reading("dev-own", 1), reading("never-seen", 2)))
        wait_for(lambda: service.stats().get("predictions") == 2, timeout_s=10)
        assert service.bundle_status() == "verifying"
        assert client.call_method("stats").status == 503
        assert client.call_method("reload").status == 409
        assert client.sent(PREDICTIONS) == []

        slow_verify.set()
        answered = predictions(client, 2)
        assert answered[("dev-own", 1)]["prediction"]["model"] == "device"
        assert service.bundle_status() == "ok"
        assert client.call_method("stats").status == 200
    finally:
        service.stop()


def test_a_bundle_refused_while_the_module_starts_sends_nothing_and_its_messages_wait_for_a_good_bundle(settings):
    _tamper(settings.bundle_dir, "models/dev-poor.joblib")  # not loaded at start: found by the verification only
    client = FakeModuleClient()
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    client.deliver(TELEMETRY, batch(reading("dev-own", 1), reading("never-seen", 2)))
    wait_for(lambda: service.bundle_status() == "refused", timeout_s=10)
    answer = client.call_method("stats")
    assert answer.status == 503 and "models/dev-poor.joblib" in answer.payload["error"]
    service.stop()
    assert client.sent(PREDICTIONS) == []
    assert client.reported["bundleStatus"] == "refused"
    assert _segments(settings)  # the messages, acknowledged to edgeHub, are still on disk

    write_tiny_bundle(settings.bundle_dir, "v2")
    restarted = FakeModuleClient()
    second = InferenceService(settings, restarted)
    assert second.start(threading.Event())
    try:
        answered = predictions(restarted, 2)
        assert set(answered) == {("dev-own", 1), ("never-seen", 2)}
        assert {item["prediction"]["model_version"] for item in answered.values()} == {"v2"}
    finally:
        second.stop()


def test_run_with_a_bundle_refused_while_starting_raises_the_refusal_naming_the_file(settings):
    _tamper(settings.bundle_dir, "models/dev-poor.joblib")
    service = InferenceService(settings, FakeModuleClient())
    with pytest.raises(BundleError, match="refusing bundle") as refusal:
        service.run(threading.Event())
    assert "models/dev-poor.joblib" in str(refusal.value) and "sha256" in str(refusal.value)


def test_a_tampered_fleet_model_refuses_the_bundle_at_once_naming_every_file_that_does_not_match(settings):
    _tamper(settings.bundle_dir, "fleet.joblib")
    _tamper(settings.bundle_dir, "models/dev-own.joblib")
    with pytest.raises(BundleError, match="2 file") as refusal:
        InferenceService(settings, FakeModuleClient())
    assert "fleet.joblib" in str(refusal.value) and "models/dev-own.joblib" in str(refusal.value)
