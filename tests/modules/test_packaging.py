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
        assert "ARG BASE_IMAGE" in dockerfile and "HEALTHCHECK" in dockerfile and "USER module" in dockerfile
        assert dockerfile.count("FROM ") >= 2  # multi-stage: build tools stay out of the image
        spec = json.loads((folder / "module.json").read_text())
        assert spec["image"]["tag"]["platforms"]["amd64"] == "./Dockerfile"
        assert (folder / spec["image"]["contextPath"] / "pyproject.toml").is_file()
