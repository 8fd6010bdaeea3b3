"""Turn pip's install report for one image's extra into that image's wheel directory.

Usage: python lock_wheelhouse.py <pip report.json> <pool dir> <image wheel dir> <project name> <extra>

The pool holds every wheel any image needs (downloaded once). The image's directory gets:
  requirements.txt  one `name==version` per line (the project excluded), sorted: exact pins
  *.whl             hard links to the pool's wheels the report uses, and nothing else
so a build context carries only its own image's wheels. Prints one line: "<n> packages, <MB> MB".
Run on the host by scripts/build_images.sh; stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    pool, image_dir, project, extra = Path(argv[1]).resolve(), Path(argv[2]), canonical(argv[3]), argv[4]
    pins: list[str] = []
    used: set[str] = set()
    for item in report["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        url = item.get("download_info", {}).get("url", "")
        path = Path(unquote(urlparse(url).path)) if url.startswith("file:") else None
        if name == project:
            continue
        if path is None or path.parent.resolve() != pool or path.suffix != ".whl":
            print(f"lock_wheelhouse: {name} {version} is not a wheel in {pool} ({url})", file=sys.stderr)
            return 1
        pins.append(f"{name}=={version}")
        used.add(path.name)

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
    text = (
        f"# Written by scripts/build_images.sh: the `{extra}` extra's dependencies, resolved offline against\n"
        "# the wheelhouse (pinned to .venv's versions when there is one).\n" + "".join(f"{p}\n" for p in sorted(pins))
    )
    requirements = image_dir / "requirements.txt"
    if not requirements.is_file() or requirements.read_text() != text:  # unchanged file: Docker's cache holds
        requirements.write_text(text)
    print(f"{len(pins)} packages, {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
