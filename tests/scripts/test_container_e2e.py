"""scripts/container_e2e.sh without a Docker engine: skipped with a message locally, a failure under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "container_e2e.sh"


def engine_missing_env(tmp_path: Path, how: str, ci: str | None) -> dict[str, str]:
    """An environment with no reachable engine: docker off PATH, or DOCKER_HOST at a socket that is not there."""
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "DOCKER_CONTEXT", "DOCKER_HOST"}}
    if how == "no docker on PATH":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("dirname", "id"):  # all the script needs before it looks for docker
            found = shutil.which(tool)
            assert found, tool
            (bin_dir / tool).symlink_to(found)
        env["PATH"] = str(bin_dir)
    else:
        env["DOCKER_HOST"] = f"unix://{tmp_path / 'no-such-docker.sock'}"
    if ci is not None:
        env["CI"] = ci
    return env


def run_e2e(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


HOW = ["no docker on PATH", "DOCKER_HOST at a missing socket"]


@pytest.mark.parametrize("how", HOW)
def test_container_e2e_fails_under_ci_when_the_docker_engine_is_missing(tmp_path: Path, how: str):
    result = run_e2e(engine_missing_env(tmp_path, how, ci="true"))
    assert result.returncode != 0
    assert "FAILED: no reachable Docker engine" in result.stdout
    assert "SKIPPED" not in result.stdout


@pytest.mark.parametrize("how", HOW)
def test_container_e2e_outside_ci_skips_with_a_message_when_the_docker_engine_is_missing(tmp_path: Path, how: str):
    result = run_e2e(engine_missing_env(tmp_path, how, ci=None))
    assert result.returncode == 0
    assert "SKIPPED: no reachable Docker engine" in result.stdout
    assert "training the bundle" not in result.stdout  # it stopped there: nothing trained or built
