"""Turn pip's install report for one image's extra into that image's wheel directory.

The pool holds every wheel any image needs (downloaded once). The image's directory gets:
  requirements.txt  one `name==version` per line (the project excluded), sorted: exact pins
  *.whl             hard links to the pool's wheels the report uses, and nothing else
so a build context carries only its own image's wheels.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["LockError", "canonical", "lock_extra"]


class LockError(Exception):
    """The report installs something that is not a wheel in the pool."""


def canonical(name: str) -> str:
    """The normalized form of a distribution name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_from_report(report: Path, pool: Path, project: str) -> tuple[list[str], set[str]]:
    """Return the `name==version` pins and the pool wheel file names pip's report installs."""
    pins: list[str] = []
    used: set[str] = set()
    for item in json.loads(report.read_text())["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        url = item.get("download_info", {}).get("url", "")
        path = Path(unquote(urlparse(url).path)) if url.startswith("file:") else None
        if name == canonical(project):
            continue
        if path is None or path.parent.resolve() != pool.resolve() or path.suffix != ".whl":
            raise LockError(f"{name} {version} is not a wheel in {pool} ({url})")
        pins.append(f"{name}=={version}")
        used.add(path.name)
    return pins, used


def link_wheels(pool: Path, image_dir: Path, used: set[str]) -> int:
    """Hard-link the used wheels into image_dir (dropping any other); return their total size in bytes."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.whl"):
        if stale.name not in used:
            stale.unlink()
    size = 0
    for name in sorted(used):
        source, link = pool / name, image_dir / name
        if not (link.exists() and os.path.samestat(link.stat(), source.stat())):
            link.unlink(missing_ok=True)
            os.link(source, link)
        size += source.stat().st_size
    return size


def lock_extra(report: Path, pool: Path, image_dir: Path, project: str, extra: str) -> str:
    """Write image_dir from pip's report; return a one-line summary ("<n> packages, <MB> MB")."""
    pins, used = pins_from_report(report, pool, project)
    size = link_wheels(pool, image_dir, used)
    text = (
        f"# Written by scripts/build_images.sh: the `{extra}` extra's dependencies, resolved offline against\n"
        "# the wheelhouse (pinned to .venv's versions when there is one).\n" + "".join(f"{p}\n" for p in sorted(pins))
    )
    requirements = image_dir / "requirements.txt"
    if not requirements.is_file() or requirements.read_text() != text:  # unchanged file: Docker's cache holds
        requirements.write_text(text)
    return f"{len(pins)} packages, {size / 1e6:.0f} MB"
