"""Static checks of the images' Dockerfiles, the build context's allow-list and the build's table of images.

The images themselves are built and checked by scripts/build_images.sh (scripts/images/; used by
tests/containers); these tests read files only, so they run everywhere in milliseconds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from scripts.images.catalog import IMAGES

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {image.name: image.dockerfile for image in IMAGES}
EXTRAS = {image.name: image.extra for image in IMAGES}
FLAVOURS = {image.name: image.flavour for image in IMAGES}
SERVICES = {"sensor", "inference", "edgehub", "field-broker", "sink", "dashboard"}  # long-running: a HEALTHCHECK
DEPLOYMENT_IMAGES = sorted(name for name, path in DOCKERFILES.items() if path.startswith("deployment/"))
# Every image runs its own package's entry point, never the umbrella `edgefleet` CLI.
PACKAGES = {image.name: image.package for image in IMAGES}
UIDS = {image.name: image.uid for image in IMAGES}


def instructions(name: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / DOCKERFILES[name]).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [re.sub(r"\s+", " ", step).strip() for step in joined.splitlines() if step.strip()]


def final_stage(name: str) -> list[str]:
    steps = instructions(name)
    last_from = max(i for i, step in enumerate(steps) if step.startswith("FROM "))
    return steps[last_from:]


def test_build_script_knows_every_image_dockerfile():
    assert set(DOCKERFILES) == {
        "sensor",
        "inference",
        "edgehub",
        "field-broker",
        "sink",
        "simulator",
        "dashboard",
        "training",
    }
    assert set(EXTRAS) == set(FLAVOURS) == set(DOCKERFILES)
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "deployment" / "images").glob("*/Dockerfile")}
    assert on_disk == {path for path in DOCKERFILES.values() if path.startswith("deployment/")}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_dockerfile_basics(name: str):
    steps = instructions(name)
    # the official slim image by default; scripts/build_images.sh passes its own base (no registry)
    assert steps[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    assert sum(step.startswith("FROM ") for step in steps) >= 3  # multi-stage: wheels stay out of the image
    extra = EXTRAS[name]
    # only this image's wheels (pinned) from the wheelhouse, installed offline
    assert f"COPY ${{WHEELHOUSE}}/{extra}/ /wheelhouse/deps/" in steps
    pip_installs = [step for step in steps if "pip install" in step]
    assert pip_installs and all("--no-index" in step for step in pip_installs)
    assert any("--requirement /wheelhouse/deps/requirements.txt" in step for step in pip_installs)
    assert any(f'"${{app}}[{extra}]"' in step for step in pip_installs)
    final = final_stage(name)
    uid = UIDS[name]
    users = [step for step in final if "useradd" in step]
    assert len(users) == 1 and f"--uid {uid} " in users[0] and f"groupadd --system --gid {uid} " in users[0]
    user = users[0].rsplit(" ", 1)[-1] if users[0].endswith("nologin " + name) else name
    assert final.count(f"USER {user}") == 1
    # the state dir (a named volume takes its owner) belongs to the image's own user
    assert f"chown {uid}:{uid} /var/lib/edgefleet" in users[0] or f"chown -R {uid}:{uid}" in users[0]
    health = [step for step in final if step.startswith("HEALTHCHECK")]
    assert len(health) == 1
    if name in SERVICES:
        # modules and MQTT services touch a health file; the dashboard answers HTTP
        # a module's file goes stale after three missed twin reports (REPORT_INTERVAL_S=10): a deaf module restarts
        max_age_s = "30" if name in {"sensor", "inference"} else "45"
        by_file = f'CMD ["python", "-m", "edgefleet.health", "/tmp/healthy", "{max_age_s}"]'
        by_http = 'CMD ["python", "-m", "edgefleet.health", "--http", "http://127.0.0.1:5006/"]'
        assert health[0].endswith(by_http if name == "dashboard" else by_file)
    else:
        assert health[0] == "HEALTHCHECK NONE"  # batch jobs


def test_every_image_runs_as_its_own_uid_but_training_shares_the_sinks_to_read_the_owner_only_lake():
    assert UIDS["training"] == UIDS["sink"] == 10001  # and RETRAIN_OUT must be writable by 10001 (compose)
    others = [uid for name, uid in UIDS.items() if name not in {"training", "sink"}]
    assert len(set(others)) == len(others) and 10001 not in others
    compose = (REPO / "deployment" / "docker-compose.yml").read_text()
    assert "uid 10001" in compose


def test_the_sensor_and_inference_images_differ_only_after_their_shared_layers():
    sensor, inference = final_stage("sensor"), final_stage("inference")
    shared = sensor.index("COPY --from=app /opt/app/ /opt/venv/lib/python3.11/site-packages/") + 1
    assert inference[:shared] == sensor[:shared]
    assert not any("useradd" in step or step.startswith("USER") for step in sensor[:shared])


@pytest.mark.parametrize("name", DEPLOYMENT_IMAGES)
def test_deployment_image_runs_its_own_package_and_labels_last(name: str):
    final = final_stage(name)
    assert f'ENTRYPOINT ["python", "-m", "{PACKAGES[name]}"]' in final
    # settings come before the big venv layer; the revision label is the only step after it, and its
    # ARG follows every RUN (a RUN after it would rebuild on every commit)
    venv = final.index("COPY --from=deps /opt/venv /opt/venv")
    assert final[venv + 1 :] == [
        "COPY --from=app /opt/app/ /opt/venv/",
        "LABEL org.opencontainers.image.revision=${REVISION} org.edgefleet.built-by=${BUILT_BY}",
    ]
    assert not [step for step in final[venv:] if step.startswith(("RUN", "ENV", "CMD", "USER"))]
    last_run = max(i for i, step in enumerate(final) if step.startswith("RUN "))
    assert min(final.index("ARG REVISION=unknown"), final.index("ARG BUILT_BY=")) > last_run


def test_mosquitto_and_java_image_dockerfiles_need_no_network_on_our_base():
    for name in ("edgehub", "field-broker", "sink"):
        assert FLAVOURS[name] == "mosquitto"
        assert any(step.startswith("RUN command -v mosquitto >/dev/null ||") for step in final_stage(name))
    assert FLAVOURS["training"] == "java"
    training = final_stage("training")
    assert any(step.startswith("RUN command -v java >/dev/null ||") for step in training)
    env = next(step for step in training if step.startswith("ENV "))
    assert "JAVA_HOME=" in env and "HOME=/var/lib/edgefleet" in env and "SPARK_LOCAL_IP=127.0.0.1" in env
    assert "mkdir -p /lake" in " ".join(final_stage("sink"))
    assert "COPY deployment/deployment.template.json /etc/edgefleet/deployment.json" in final_stage("edgehub")


def dockerignore_allows(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a directory pattern covers what is under it."""
    allowed = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_dockerignore_lets_through_exactly_what_the_image_dockerfiles_copy():
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    sources = set()
    for name in DOCKERFILES:
        steps = instructions(name)
        args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(steps), re.M))
        for step in steps:
            if step.startswith("COPY ") and "--from=" not in step:
                source = step.split()[1]
                for arg, default in args.items():
                    source = source.replace(f"${{{arg}}}", default)
                sources.add(source.rstrip("/"))
    wheelhouse = ".cache/images/wheelhouse"
    assert sources >= {f"{wheelhouse}/edge", f"{wheelhouse}/app", "deployment/deployment.template.json"}
    for source in sources:
        assert dockerignore_allows(source + "/x.whl", rules) or dockerignore_allows(source, rules), source
    # the shared pool (pyspark and all) and the rest of the repository stay out
    for path in (f"{wheelhouse}/pool/pyspark.whl", ".venv/bin/python", ".git/HEAD", "out/lake/x", "tests/x.py"):
        assert not dockerignore_allows(path, rules), path


def test_compose_uses_only_images_the_build_script_makes():
    compose = yaml.safe_load((REPO / "deployment" / "docker-compose.yml").read_text())
    images = {service["image"].split(":")[0] for service in compose["services"].values() if "image" in service}
    assert images <= {f"edgefleet-{name}" for name in DOCKERFILES}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_image_runs_a_package_entry_point_that_exists(name: str):
    package = PACKAGES[name]
    assert (REPO / package.replace(".", "/") / "__main__.py").is_file() or (
        REPO / (package.replace(".", "/") + ".py")
    ).is_file()
    if not DOCKERFILES[name].startswith("deployment/"):  # the modules: CMD, as iotedgedev expects
        assert f'CMD ["python", "-m", "{package}"]' in final_stage(name)
