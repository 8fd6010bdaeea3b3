"""Health: a process touches its health file while it works; the container HEALTHCHECK reads its age.

Usage: python -m edgefleet.health <health file> <max age in seconds>
       python -m edgefleet.health --http <url>     (a web service: healthy while it answers 200)
"""

from __future__ import annotations

import logging
import sys
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["main", "touch_health"]


def touch_health(path: Path | None) -> None:
    """Mark the module healthy now (the container's HEALTHCHECK checks the file's age)."""
    if path is None:
        return
    try:
        path.touch()
    except OSError as err:
        logger.warning("Cannot touch the health file %s: %s", path, err)


def main(argv: list[str]) -> int:
    """Exit 0 when the file exists and is younger than the max age (or the URL answers 200), 1 otherwise."""
    if len(argv) == 2 and argv[0] == "--http":
        return _check_http(argv[1])
    if len(argv) != 2:
        print("usage: python -m edgefleet.health <health file> <max age s>", file=sys.stderr)
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


def _check_http(url: str) -> int:
    """Exit code 0 when `url` answers 200 within 4 s, 1 otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = response.status
    except OSError as err:
        print(f"unhealthy: {url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
