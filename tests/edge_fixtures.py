"""Edge fixtures (a plugin of the root conftest): a real field Mosquitto, the stand-in, modules as real processes."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
import pytest

from edgefleet.bundle import read_manifest
from edgefleet.deployment import (
    DEFAULT_TEMPLATE,
    Deployment,
    load_deployment,
    parse_deployment,
    with_raw_telemetry_route,
)
from edgefleet.lake import read_jsonl
from edgefleet.mqtt_login import PasswordFile, tls_context
from edgefleet_cli.local_edge import FieldEndpoint, LocalEdge
from edgehub.auth import ModuleIdentity, read_keys_file, sas_token, sas_username
from edgehub.standin import DEFAULT_HUB_HOSTNAME

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / DEFAULT_TEMPLATE
_blocks = itertools.count(1)


def next_ip_base() -> str:
    """Return a loopback block no other stand-in of this test run uses (the SDK always dials port 8883)."""
    return f"127.{200 + os.getpid() % 50}.{next(_blocks)}"


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.05) -> Any:
    """Poll until `check` returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value:
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s (last value: {value!r})")
        time.sleep(interval_s)
        value = check()
    return value


def module_mqtt_client(
    identity: ModuleIdentity,
    ca_file: Path,
    *,
    client_id: str | None = None,
    clean_session: bool = True,
    ttl_s: int = 3600,
) -> mqtt.Client:
    """Return a paho client with a module's credentials (its SAS token) that trusts the stand-in's CA."""
    client = mqtt.Client(client_id=client_id or identity.client_id, clean_session=clean_session, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca_file))
    username = sas_username(identity.hub_hostname, identity.device, identity.module)
    client.username_pw_set(username, sas_token(identity, int(time.time()) + ttl_s))
    return client


def module_identity_in(state_dir: Path, module: str, edge_device: str = "edge1") -> ModuleIdentity:
    """Return a module's identity with the key a stand-in keeps in its state folder."""
    key = read_keys_file(state_dir / "secrets" / "module-keys", [module])[module]
    return ModuleIdentity(DEFAULT_HUB_HOSTNAME, edge_device, module, key)


# Readings are dated from two days ago on, one per seq second: inside the sensor's window around
# the edge's clock (7 days back), whatever day the tests run.
READINGS_START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def ts_text(ts: datetime) -> str:
    """Return a UTC timestamp as a device writes it."""
    return ts.isoformat().replace("+00:00", "Z")


def reading(device_id: str, seq: int, features: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """Return one telemetry object as a field device sends it."""
    ts = READINGS_START + timedelta(seconds=seq)
    obj = {
        "schema": "edgefleet.telemetry/1",
        "device_id": device_id,
        "seq": seq,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "features": features
        if features is not None
        else {"temperature_c": 21.5 + seq % 7, "humidity_pct": 40.0, "vibration_mm_s": 1.5, "load_pct": 55.0},
    }
    obj.update(extra)
    return obj


def field_client(endpoint: FieldEndpoint, client_id: str) -> mqtt.Client:
    """Return a paho client set up to log in to a field broker: TLS, user and password unless it is the dev broker."""
    client = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    if endpoint.ca_file is not None:
        client.tls_set_context(tls_context(endpoint.ca_file))
    if endpoint.username is not None and endpoint.password_file is not None:
        password = PasswordFile.read(endpoint.password_file).password.get_secret_value()
        client.username_pw_set(endpoint.username, password)
    return client


class FieldPublisher:
    """A field device gateway: one paho client publishing QoS 1 to the field broker (as its gateway identity)."""

    def __init__(self, endpoint: FieldEndpoint, client_id: str = "test-field-devices") -> None:
        # The secure broker names the session after the user (edgefleet-gateway): one such publisher per edge.
        self.client = field_client(endpoint, client_id)
        # Keep fewer than 65,535 messages queued: paho reuses message ids beyond that.
        self.client.max_queued_messages_set(50_000)
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(0.1, 2)
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, payload: bytes | str | dict[str, Any], topic: str | None = None) -> None:
        """Publish one payload (a dict is sent as JSON to its device's topic)."""
        if isinstance(payload, dict):
            topic = topic or f"fleet/{payload.get('device_id', 'x')}/telemetry"
            payload = json.dumps(payload)
        info = self.client.publish(topic or "fleet/raw/telemetry", payload, qos=1)
        while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # back-pressure: wait for acknowledgements
            time.sleep(0.01)
            info = self.client.publish(topic or "fleet/raw/telemetry", payload, qos=1)
        self.infos.append(info)

    def publish_all(self, payloads: Iterable[bytes | str | dict[str, Any]], rate_per_s: float | None = None) -> None:
        """Publish many payloads, optionally paced."""
        started = time.monotonic()
        for index, payload in enumerate(payloads):
            if rate_per_s:
                delay = started + index / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.publish(payload)

    def wait_acked(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker acknowledged everything published."""
        # `is_published()` raises for a message published while disconnected, though paho keeps it
        # queued and sends it after reconnecting; the flag it reads is set on PUBACK either way.
        wait_for(lambda: all(info._published for info in self.infos), timeout_s)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def lake_rows(edge: LocalEdge) -> pd.DataFrame:
    """Flush the stand-in's sink and return every lake row."""
    sink = edge.lake_sink
    assert sink is not None
    sink.flush()
    files = sorted(edge.lake_dir.glob("date=*/*.parquet"))
    if not files:
        return pd.DataFrame(columns=["device_id", "seq", "source_module"])
    return pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)


def deadletters(edge: LocalEdge) -> list[dict[str, Any]]:
    """Return the dead letters the local IoT Hub sink received."""
    return read_jsonl(edge.lake_dir / "_deadletters")


def events(edge: LocalEdge) -> list[dict[str, Any]]:
    """Return the other messages (alerts, twin notifications) the local IoT Hub sink received."""
    return read_jsonl(edge.lake_dir / "_events")


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    """The real deployment template (placeholders left as written)."""
    return load_deployment(TEMPLATE)


@pytest.fixture(scope="session")
def raw_telemetry_deployment(deployment: Deployment) -> Deployment:
    """The template plus the opt-in raw telemetry route: for tests of the sensor's own record of each reading."""
    return parse_deployment(with_raw_telemetry_route(deployment.raw), source=deployment.source)


@pytest.fixture(scope="session")
def bundle_version(small_bundle: Path) -> str:
    return read_manifest(small_bundle).bundle_version


StartEdge = Callable[..., LocalEdge]


@pytest.fixture
def start_edge(tmp_path: Path, deployment: Deployment, small_bundle: Path, bundle_version: str) -> Iterator[StartEdge]:
    """Return a function that starts a LocalEdge with the real manifest; everything is stopped afterwards."""
    started: list[LocalEdge] = []

    def start(**kwargs: Any) -> LocalEdge:
        overrides = kwargs.pop("desired_overrides", {})
        overrides.setdefault("inference", {}).setdefault("expectedBundleVersion", bundle_version)
        module_env = kwargs.pop("module_env", {})
        for module in kwargs.get("modules", ("sensor", "inference")):
            module_env.setdefault(module, {}).setdefault("REPORT_INTERVAL_S", "0.5")
        edge = LocalEdge(
            tmp_path / f"edge{len(started)}",
            kwargs.pop("deployment", deployment),
            bundle_dir=kwargs.pop("bundle_dir", small_bundle),
            ip_base=next_ip_base(),
            desired_overrides=overrides,
            module_env=module_env,
            flush_every_s=0.5,
            # Tests read the lake while the edge runs: roll its files as often as it flushes.
            **{"lake_roll_every_s": 0.5, **kwargs},
        )
        started.append(edge)
        edge.start()
        return edge

    yield start
    errors = []
    for edge in reversed(started):
        try:
            edge.stop()
        except Exception as err:  # stop everything, then report
            errors.append(err)
    if errors:
        raise errors[0]


@pytest.fixture
def publisher_factory() -> Iterator[Callable[[LocalEdge], FieldPublisher]]:
    """Return a function that connects a field publisher to an edge's field broker."""
    made: list[FieldPublisher] = []

    def make(edge: LocalEdge) -> FieldPublisher:
        publisher = FieldPublisher(edge.field_endpoint(), client_id=f"test-field-{len(made)}-{threading.get_ident()}")
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close()
