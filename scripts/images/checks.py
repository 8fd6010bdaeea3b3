"""The checks a freshly built image must pass before its tags move; what each checks is on its row in catalog.py."""

from __future__ import annotations

from pathlib import Path

from scripts.images.catalog import Image
from scripts.images.common import output
from scripts.images.docker import inspect

__all__ = ["CHECK_SCRIPT", "MISSING_FILES", "check_image", "check_installed_files"]

CHECK_SCRIPT = Path(__file__).with_name("check_image.py")

# For real, in one container (offline, as the image's user): Java, a writable HOME and /tmp, a tiny
# fleet trained on Spark (local mode), exported with ONNX, tracked in MLflow (sqlite), the bundle verified.
TRAINING_RUN = """
java -version 2>&1 | head -n 1
touch "$HOME/.write-check" /tmp/.write-check && rm "$HOME/.write-check" /tmp/.write-check
echo "writable: HOME=$HOME and /tmp"
edgefleet generate-history --devices 5 --rows 120 --out /tmp/history.parquet
python -m cloud_training train --history /tmp/history.parquet --out /tmp/bundle \
  --tracking-uri sqlite:////tmp/mlflow.db --execution spark --quiet
edgefleet bundle verify /tmp/bundle"""
TRAINING_REPORT = ("openjdk", "writable", "wrote", "bundle")

# Every file each installed distribution's RECORD lists must be in the image. The images copy
# whole virtualenvs between stages, and on the fuse-overlayfs storage driver such a copy once
# dropped one file of 60,000 (an MLflow migration script: the training image's MLflow could not
# open its database). Test suites the Dockerfiles delete, bytecode and scripts are not counted.
MISSING_FILES = "FAIL files missing from installed packages"
INSTALLED_FILES = """
import os, sys
from importlib import metadata
missing, total = [], 0
for dist in metadata.distributions():
    for entry in dist.files or ():
        path = str(entry)
        parts = path.replace(os.sep, "/").split("/")
        if "tests" in parts or "__pycache__" in parts or parts[0] == "..":  # scripts: the entry-point check
            continue
        total += 1
        if not os.path.exists(dist.locate_file(entry)):
            missing.append(f"{dist.metadata['Name']}: {path}")
for line in missing[:10]:
    print("missing", line)
print(f"installed files: {total - len(missing)} of {total} present")
sys.exit(1 if missing else 0)
"""


def check_image(image: Image, ref: str) -> tuple[bool, list[str]]:
    """Run every check of the image on ref; return whether all passed and what they printed."""
    lines: list[str] = []
    checks = (check_installed_files, run_check_script, run_training, check_user, check_entry_point, check_health)
    for check in checks:
        ok, printed = check(image, ref)
        lines += printed
        if not ok:
            return False, lines
    return True, lines


def check_installed_files(image: Image, ref: str) -> tuple[bool, list[str]]:
    """Every file the image's installed packages list is there (a layer copy can drop one: MISSING_FILES)."""
    command = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", ref, "-c", INSTALLED_FILES]
    code, text = output(command, merge_stderr=True)
    lines = text.splitlines()
    if code != 0:
        return False, [*lines, MISSING_FILES]
    return True, lines[-1:]


def run_check_script(image: Image, ref: str) -> tuple[bool, list[str]]:
    """check_image.py in the image, offline, as the image's user (imports, forbidden modules, probes)."""
    arguments = image.check_arguments()
    if not arguments:
        return True, []
    command = ["docker", "run", "--rm", "-i", "--network", "none", "--entrypoint", "python", ref, "-", *arguments]
    with CHECK_SCRIPT.open("rb") as script:
        code, text = output(command, stdin=script, merge_stderr=True)
    return code == 0, text.splitlines()


def run_training(image: Image, ref: str) -> tuple[bool, list[str]]:
    """A tiny Spark training run in the image (--hostname localhost: with no network, its name does not resolve)."""
    if not image.training_run:
        return True, []
    command = ["docker", "run", "--rm", "--network", "none", "--hostname", "localhost", "--entrypoint", "sh", ref]
    code, text = output([*command, "-ec", TRAINING_RUN], merge_stderr=True)
    if code != 0:
        return False, [*text.splitlines(), "FAIL the tiny training run (above)"]
    return True, [line for line in text.splitlines() if line.startswith(TRAINING_REPORT)]


def check_user(image: Image, ref: str) -> tuple[bool, list[str]]:
    """The image runs as its own uid (catalog.py)."""
    code, uid = output(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id", ref, "-u"])
    uid = uid.strip()
    if code != 0 or uid != str(image.uid):
        return False, [f"FAIL runs as uid {uid}, not {image.uid}"]
    return True, [f"runs as uid {uid}"]


def check_entry_point(image: Image, ref: str) -> tuple[bool, list[str]]:
    """The deployment images' entry point, their package's own `python -m <package>`, runs."""
    if not image.deployment_image:
        return True, []
    code, text = output(["docker", "run", "--rm", "--network", "none", ref, "--help"])
    if code != 0 or not text.startswith(f"usage: python -m {image.package}"):
        return False, [f"FAIL 'python -m {image.package} --help' (the entry point) does not run"]
    return True, [f"entry point: python -m {image.package}"]


def check_health(image: Image, ref: str) -> tuple[bool, list[str]]:
    """Services have the edgefleet.health check; batch jobs have HEALTHCHECK NONE."""
    health = inspect(ref, '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}')
    if image.service and "edgefleet.health" not in health:
        return False, [f"FAIL no health check ({health or 'none'})"]
    if not image.service and health != "NONE":
        return False, [f"FAIL a batch job with a health check ({health})"]
    return True, [f"health check: {health}"]
