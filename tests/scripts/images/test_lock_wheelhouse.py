"""Locking an extra: exact pins and hard links to just the wheels pip's report uses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts.images.lock_wheelhouse import LockError, lock_extra


def write_report(path: Path, items: list[tuple[str, str, str]]) -> Path:
    install = [{"metadata": {"name": n, "version": v}, "download_info": {"url": url}} for n, v, url in items]
    path.write_text(json.dumps({"install": install}))
    return path


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("paho_mqtt-1.6.1-py3-none-any.whl", "PyYAML-6.0.2-cp311-manylinux.whl", "old-1.0-py3-none-any.whl"):
        (pool / name).write_bytes(b"wheel " + name.encode())
    return pool


def test_lock_extra_pins_exact_versions_and_links_only_the_wheels_the_report_uses(tmp_path: Path, pool: Path):
    image_dir = tmp_path / "simulator"
    image_dir.mkdir()
    (image_dir / "stale-0.1-py3-none-any.whl").write_bytes(b"stale")
    report = write_report(
        tmp_path / "report.json",
        [
            ("edgefleet", "0.1.0", "file:///somewhere/app/edgefleet-0.1.0-py3-none-any.whl"),
            ("paho_mqtt", "1.6.1", f"file://{pool}/paho_mqtt-1.6.1-py3-none-any.whl"),
            ("PyYAML", "6.0.2", f"file://{pool}/PyYAML-6.0.2-cp311-manylinux.whl"),
        ],
    )
    summary = lock_extra(report, pool, image_dir, "edgefleet", "simulator")
    assert summary.startswith("2 packages, ")
    pins = [line for line in (image_dir / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins == ["paho-mqtt==1.6.1", "pyyaml==6.0.2"]
    wheels = sorted(p.name for p in image_dir.glob("*.whl"))
    assert wheels == ["PyYAML-6.0.2-cp311-manylinux.whl", "paho_mqtt-1.6.1-py3-none-any.whl"]
    for wheel in wheels:
        assert os.path.samefile(image_dir / wheel, pool / wheel)


def test_lock_extra_leaves_an_unchanged_requirements_file_untouched_so_dockers_cache_holds(tmp_path: Path, pool: Path):
    report = write_report(
        tmp_path / "report.json", [("paho-mqtt", "1.6.1", f"file://{pool}/paho_mqtt-1.6.1-py3-none-any.whl")]
    )
    lock_extra(report, pool, tmp_path / "edgehub", "edgefleet", "edgehub")
    requirements = tmp_path / "edgehub" / "requirements.txt"
    os.utime(requirements, (1, 1))
    lock_extra(report, pool, tmp_path / "edgehub", "edgefleet", "edgehub")
    assert requirements.stat().st_mtime == 1


def test_lock_extra_refuses_a_package_that_is_not_a_wheel_in_the_pool(tmp_path: Path, pool: Path):
    report = write_report(tmp_path / "report.json", [("numpy", "2.0.0", "https://files.example/numpy-2.0.0.tar.gz")])
    with pytest.raises(LockError, match=r"numpy 2\.0\.0 is not a wheel in"):
        lock_extra(report, pool, tmp_path / "edge", "edgefleet", "edge")
