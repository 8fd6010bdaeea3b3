"""Container health check: healthy while the module has touched its health file recently.

Usage: python -m edgefleet.healthcheck <health file> <max age in seconds>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    """Exit 0 when the file exists and is younger than the max age, 1 otherwise."""
    if len(argv) != 2:
        print("usage: python -m edgefleet.healthcheck <health file> <max age s>", file=sys.stderr)
        return 2
    path, max_age_s = Path(argv[0]), float(argv[1])
    try:
        age_s = time.time() - path.stat().st_mtime
    except OSError:
        print(f"unhealthy: {path} does not exist yet", file=sys.stderr)
        return 1
    if age_s > max_age_s:
        print(f"unhealthy: {path} is {age_s:.0f} s old (max {max_age_s:.0f} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
