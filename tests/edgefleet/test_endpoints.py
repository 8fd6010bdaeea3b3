"""Module endpoint declarations: the inputs and outputs the modules' code uses."""

from __future__ import annotations

import pytest

from edgefleet.endpoints import INFERENCE, MODULES, SENSOR, EndpointError, ModuleEndpoints

pytestmark = pytest.mark.fast


def test_endpoint_declarations_cover_both_modules():
    assert MODULES == {"sensor": SENSOR, "inference": INFERENCE}
    assert SENSOR.output("telemetry") == "telemetry"
    assert INFERENCE.input("telemetry") == "telemetry"


def test_asking_for_an_undeclared_endpoint_raises_with_the_declared_names():
    with pytest.raises(EndpointError, match=r'no output "predictions" \(declared: telemetry, deadletter\)'):
        SENSOR.output("predictions")
    with pytest.raises(EndpointError, match="letters, digits"):
        ModuleEndpoints(name="x", outputs=("bad/name",))
