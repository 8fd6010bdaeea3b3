"""The next deployment manifest a retraining writes: every placeholder of the template filled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloud_training.merge import deployment_variables
from edgefleet.deployment import DEFAULT_TEMPLATE, module_images

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]


def test_retraining_fills_every_placeholder_of_the_repositorys_template():
    wanted = set(re.findall(r"\$\{([^}]+)\}", (ROOT / DEFAULT_TEMPLATE).read_text()))
    assert wanted <= set(deployment_variables("20261206T000000Z-abc", "0.1.0"))


def test_retraining_names_the_images_manifest_build_names():
    built = module_images(ROOT / "modules")
    variables = deployment_variables("v1", "0.1.0")
    assert {name: variables[name] for name in built if name != "MODULES.inference"} == {
        name: image for name, image in built.items() if name != "MODULES.inference"
    }
