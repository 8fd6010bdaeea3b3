"""The edge install stays small: no Spark, MLflow or pandas in the modules or their extra."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pyspark", "mlflow", "pandas", "pyarrow", "matplotlib")


def test_edge_extra_pulls_no_spark_mlflow_or_pandas():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["edge"]]
    assert not [req for req in requirements if req.lower().startswith(HEAVY)]


def test_modules_import_nothing_heavy():
    code = (
        "import sys, json, modules.sensor.__main__, modules.inference.__main__; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_each_module_ships_a_dockerfile_and_an_iotedgedev_module_json():
    for module in ("sensor", "inference"):
        folder = REPO / "modules" / module
        dockerfile = (folder / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE" in dockerfile and "HEALTHCHECK" in dockerfile and f"USER {module}" in dockerfile
        assert dockerfile.count("FROM ") >= 2  # multi-stage: build tools stay out of the image
        spec = json.loads((folder / "module.json").read_text())
        assert spec["image"]["tag"]["platforms"]["amd64"] == "./Dockerfile"
        assert (folder / spec["image"]["contextPath"] / "pyproject.toml").is_file()


def test_module_images_share_every_layer_up_to_the_app_and_send_no_telemetry():
    sensor = (REPO / "modules" / "sensor" / "Dockerfile").read_text()
    inference = (REPO / "modules" / "inference" / "Dockerfile").read_text()
    shared = "COPY --from=app"

    def body(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return lines[: next(i for i, line in enumerate(lines) if line.startswith(shared))]

    # Identical up to the app layer, so a device running both downloads the dependencies once.
    assert body(sensor) == body(inference)
    assert "ORT_DISABLE_TELEMETRY=1" in inference
    # The build context is an allow-list: the venv, the git history and the lake stay out.
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert next(rule for rule in rules if rule and not rule.startswith("#")) == "*"
