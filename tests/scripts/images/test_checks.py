"""An image whose layer copy dropped a file is caught by its checks and built afresh once, not tagged."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.images import build as build_module
from scripts.images.build import ImageBuilder
from scripts.images.catalog import image
from scripts.images.checks import INSTALLED_FILES, MISSING_FILES
from scripts.images.common import BuildError, Layout, Timings
from scripts.images.docker import Replaced
from tests.scripts.images.test_cli import settings_for

pytestmark = pytest.mark.fast


def _installed_files_check(site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None if site is None else {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", INSTALLED_FILES], capture_output=True, text=True, env=env, check=False)


def test_the_installed_files_check_passes_on_a_complete_environment():
    run = _installed_files_check()

    assert run.returncode == 0, run.stdout
    present, _, total = run.stdout.split()[2:5]
    assert present == total and int(total) > 1000


def test_the_installed_files_check_names_a_file_missing_from_an_installed_package(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "__init__.py").write_text("")
    info = tmp_path / "demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "demo/__init__.py,,\ndemo/versions/2c33_migration.py,,\ndemo/tests/test_gone.py,,\ndemo-1.0.dist-info/RECORD,,\n"
    )

    run = _installed_files_check(tmp_path)

    assert run.returncode == 1
    assert "missing demo: demo/versions/2c33_migration.py" in run.stdout
    assert "test_gone" not in run.stdout  # test suites the Dockerfiles delete are not counted


class _Builder(ImageBuilder):
    """The builder with docker replaced: each build yields the next image, whose checks say what it holds."""

    def __init__(self, images: list[str], root: Path) -> None:
        settings = dataclasses.replace(settings_for(), layout=Layout(root))
        settings.layout.logs.mkdir(parents=True)
        super().__init__(settings, None, Timings(), Replaced())  # type: ignore[arg-type]
        self.images = images
        self.builds: list[bool] = []  # no_cache of each build

    def docker_build(self, image, candidate, *, no_cache=False):
        self.builds.append(no_cache)


def _fake_docker(monkeypatch, builder: _Builder) -> list[str]:
    tagged: list[str] = []
    monkeypatch.setattr(build_module, "image_id", lambda ref: "new" if "unchecked" in ref else "old")
    monkeypatch.setattr(build_module, "run", lambda command, **_: tagged.append(command[-1]))
    monkeypatch.setattr(build_module, "remove_candidates", lambda *_, **__: None)

    def check(_image, _ref):
        holds = builder.images[len(builder.builds) - 1]
        if holds == "complete":
            return True, ["installed files: 9 of 9 present"]
        if holds == "dropped a file":
            return False, ["missing mlflow: mlflow/store/x.py", MISSING_FILES]
        return False, ["FAIL import onnxruntime"]

    monkeypatch.setattr(build_module, "check_image", check)
    return tagged


def test_an_image_whose_layer_copy_dropped_a_file_is_rebuilt_without_the_cache_and_tagged(monkeypatch, tmp_path):
    builder = _Builder(["dropped a file", "complete"], tmp_path)
    tagged = _fake_docker(monkeypatch, builder)

    builder.build(image("sensor"))

    assert builder.builds == [False, True]
    assert "edgefleet-sensor:0.1.0" in tagged


@pytest.mark.parametrize("images", [["dropped a file", "dropped a file"], ["broken"]])
def test_an_image_still_failing_its_checks_is_never_tagged(monkeypatch, tmp_path, images):
    builder = _Builder(images, tmp_path)
    tagged = _fake_docker(monkeypatch, builder)

    with pytest.raises(BuildError, match="failed its checks"):
        builder.build(image("sensor"))

    assert builder.builds == [False, True] if images[0] == "dropped a file" else [False]
    assert tagged == []
