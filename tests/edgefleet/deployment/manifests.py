"""The shipped deployment template and helpers to mutate it and read the validator's findings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from edgefleet.deployment import DEFAULT_TEMPLATE, Problem, validate_deployment

TEMPLATE = Path(__file__).resolve().parents[3] / DEFAULT_TEMPLATE
_SHIPPED: dict[str, Any] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
VARIABLES = {
    "MODULES.sensor": "registry.example/edgefleet-sensor:0.1.0-amd64",
    "MODULES.inference": "registry.example/edgefleet-inference:0.1.0-amd64",
    "MODULES.fieldbroker": "registry.example/edgefleet-field-broker:0.1.0-amd64",
    "BUNDLE_VERSION": "20261121T061500Z-abc123",
}


def template() -> dict[str, Any]:
    """Return a fresh copy of the shipped template to mutate."""
    return copy.deepcopy(_SHIPPED)


def agent(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeAgent"]["properties.desired"]


def hub(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeHub"]["properties.desired"]


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "error"]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "warning"]


def only_error(manifest: dict[str, Any]) -> Problem:
    found = errors(validate_deployment(manifest))
    assert len(found) == 1, found
    return found[0]
