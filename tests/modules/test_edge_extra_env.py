"""An environment with only the `edge` extra runs every module the sensor and inference images ship.

The layer contract (`make check`) proves no import chain reaches Spark, MLflow or pandas; this test
proves it on a real install: a fresh virtualenv, `pip install .[edge]`, then every module under
`modules/` imported for real. A new heavy import, or an extra that quietly pulls one in, fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_NOT_SOURCE = (".git", ".venv", "out", "build", ".cache", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache")
HEAVY = ("pyspark", "mlflow", "pandas", "pyarrow", "matplotlib", "bokeh")

_PROBE = """
import importlib, importlib.util, json, pkgutil, sys
import modules
names = sorted(
    info.name for info in pkgutil.walk_packages(modules.__path__, "modules.")
    if not info.name.endswith("__main__")
)
for name in names:
    importlib.import_module(name)
heavy = {heavy!r}
print(json.dumps({{
    "imported": names,
    "loaded_heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
    "installed_heavy": sorted(h for h in heavy if importlib.util.find_spec(h) is not None),
    "module_file": modules.__file__,
}}))
"""


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the python of a new virtualenv holding the project with only its `edge` extra."""
    root = tmp_path_factory.mktemp("edge-env")
    # pip builds a local project in place: build a copy, so the repository gets no build/ folder.
    source = tmp_path_factory.mktemp("edge-source") / "edgefleet"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[edge]"],
        check=True,
        env=env,
        timeout=900,
    )
    return python


def test_an_edge_only_install_imports_every_module_the_edge_images_ship(edge_env: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(edge_env), "-c", _PROBE.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: the installed package must be the one imported
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.splitlines()[-1])
    assert "site-packages" in probe["module_file"], probe["module_file"]
    assert {"modules.runtime", "modules.sensor.service", "modules.inference.service"} <= set(probe["imported"])
    assert probe["installed_heavy"] == [], "the edge extra pulled in heavy packages"
    assert probe["loaded_heavy"] == []


def test_the_inference_module_loads_a_real_bundle_in_an_edge_only_install(
    edge_env: Path, small_bundle: Path, tmp_path: Path
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith(("IOTEDGE_", "EdgeHub"))
    }
    env["BUNDLE_DIR"] = str(small_bundle)
    result = subprocess.run(
        [str(edge_env), "-m", "modules.inference"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    # The bundle verified and loaded (ONNX Runtime, scikit-learn); only the missing edgeHub stops it.
    assert result.returncode == 2, result.stderr[-3000:]
    assert "EdgeHubConnectionString" in result.stderr
    assert "Traceback" not in result.stderr
