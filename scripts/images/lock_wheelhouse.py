"""Turn pip's install report into the wheelhouse's requirements.txt; list wheels nothing needs.

Usage: python lock_wheelhouse.py <pip report.json> <wheelhouse deps dir> <project name>
Writes <deps dir>/requirements.txt (one `name==version` per line, the project excluded) and prints
the file names of wheels in <deps dir> the report does not use, one a line (the caller removes them).
Run on the host by scripts/build_images.sh; stdlib only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    report, deps_dir, project = json.loads(Path(argv[0]).read_text()), Path(argv[1]), canonical(argv[2])
    pins: list[str] = []
    used: set[str] = set()
    for item in report["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        url = item.get("download_info", {}).get("url", "")
        path = Path(unquote(urlparse(url).path)) if url.startswith("file:") else None
        if name == project:
            continue
        if path is None or path.parent.resolve() != deps_dir.resolve() or path.suffix != ".whl":
            print(f"lock_wheelhouse: {name} {version} is not a wheel in {deps_dir} ({url})", file=sys.stderr)
            return 1
        pins.append(f"{name}=={version}")
        used.add(path.name)
    (deps_dir / "requirements.txt").write_text(
        "# Written by scripts/build_images.sh: the edge extra's dependencies, resolved against this wheelhouse.\n"
        + "".join(f"{pin}\n" for pin in sorted(pins))
    )
    for wheel in sorted(deps_dir.glob("*.whl")):
        if wheel.name not in used:
            print(wheel.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
