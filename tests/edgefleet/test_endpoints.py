"""Module endpoint declarations: the inputs and outputs the modules' code uses."""

from __future__ import annotations

import pytest

from edgefleet.endpoints import FIELDBROKER, INFERENCE, MODULES, SENSOR, EndpointError, ModuleEndpoints

pytestmark = pytest.mark.fast


def test_endpoint_declarations_cover_every_module_and_the_field_broker_talks_to_no_edgehub():
    assert MODULES == {"sensor": SENSOR, "inference": INFERENCE, "fieldbroker": FIELDBROKER}
    assert not FIELDBROKER.inputs and not FIELDBROKER.outputs and not FIELDBROKER.edgehub_client
    assert SENSOR.output("telemetry") == "telemetry"
    assert INFERENCE.input("telemetry") == "telemetry"


def test_asking_for_an_undeclared_endpoint_raises_with_the_declared_names():
    with pytest.raises(EndpointError, match=r'no output "predictions" \(declared: telemetry, deadletter\)'):
        SENSOR.output("predictions")
    with pytest.raises(EndpointError, match="letters, digits"):
        ModuleEndpoints(name="x", outputs=("bad/name",))
