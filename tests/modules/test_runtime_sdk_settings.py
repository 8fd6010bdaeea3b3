"""The SDK settings a module client is created with, read back from the real azure-iot-device client."""

from __future__ import annotations

import os

import pytest
from azure.iot.device.common.pipeline import pipeline_stages_mqtt

from edgehub.certs import ensure_certs
from modules.runtime import client as runtime_client

CONNECTION = "HostName=edge1.local;DeviceId=edge1;ModuleId=sensor;SharedAccessKey=c2VjcmV0;GatewayHostName=127.0.0.1"


def test_a_module_client_gives_up_a_hanging_connection_attempt_after_15_s_not_the_sdks_60(monkeypatch, tmp_path):
    ca = ensure_certs(tmp_path / "certs", ["127.0.0.1"]).ca_cert  # the stand-in's own CA, as a dev run has
    monkeypatch.setattr(pipeline_stages_mqtt, "WATCHDOG_INTERVAL", 60)
    monkeypatch.setenv("EdgeHubConnectionString", CONNECTION)
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(ca))
    for name in [name for name in os.environ if name.startswith("IOTEDGE_")]:
        monkeypatch.delenv(name)

    try:
        client = runtime_client.create_module_client()
    except Exception as err:  # the dev environment needs a readable CA: say so rather than pass quietly
        pytest.fail(f"could not create the client from a dev environment: {err}")
    try:
        # The SDK arms each connection attempt's watchdog with this module constant.
        assert pipeline_stages_mqtt.WATCHDOG_INTERVAL == runtime_client.SDK_CONNECT_WATCHDOG_S == 15
        assert runtime_client._mqtt_transport(client) is not None  # the input hook's seam exists too
    finally:
        client.shutdown()
