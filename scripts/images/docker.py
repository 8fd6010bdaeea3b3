"""The Docker engine, through the docker CLI: inspecting images and removing the ones this build replaced."""

from __future__ import annotations

import os
import threading

from scripts.images.common import log, output, succeeds

__all__ = ["Replaced", "build_env", "image_id", "inspect", "remove_replaced"]


def inspect(ref: str, template: str) -> str:
    """The image's `docker image inspect -f template`, or "" when there is no such image."""
    code, text = output(["docker", "image", "inspect", "-f", template, ref])
    return text.strip() if code == 0 else ""


def image_id(ref: str) -> str:
    """The image's id, or "" when there is no such image."""
    return inspect(ref, "{{.Id}}")


def build_env() -> dict[str, str]:
    """The environment for `docker build`: without the buildx plugin, the classic builder."""
    env = dict(os.environ)
    if not succeeds(["docker", "buildx", "version"]):
        env.pop("DOCKER_BUILDKIT", None)  # docker falls back to the classic builder (with a deprecation note)
    return env


class Replaced:
    """Images a tag of this run moved away from, in the order it happened."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def retag(self, old_id: str, tag: str) -> None:
        """Note old_id when the tag names another image now."""
        if old_id and old_id != image_id(tag):
            with self._lock:
                self._ids.append(old_id)

    def newest_first(self) -> list[str]:
        with self._lock:
            return list(reversed(self._ids))


def remove_replaced(replaced: Replaced) -> None:
    """Remove images this run re-tagged away from when nothing names them and they are ours.

    Newest first: a replaced base image is still the parent of the module images replaced after it.
    """
    for old in replaced.newest_first():
        if not inspect(old, '{{index .Config.Labels "org.edgefleet.built-by"}}'):
            continue
        if inspect(old, "{{len .RepoTags}}") != "0":
            continue
        remove_stale_cache_on(old)
        # removing the last image built on it may have removed it already (untagged parents go along)
        gone = not succeeds(["docker", "image", "inspect", old])
        if gone or succeeds(["docker", "image", "rm", old]):
            log(f"removed the previous build {old[7:19]} (replaced)")
        else:
            log(f"kept the previous build {old[7:19]}: other images still use it")


def remove_stale_cache_on(old: str) -> None:
    """Remove the classic builder's cache images built on a replaced image (they can never be used again).

    Only untagged, childless images whose parent chain reaches old are touched.
    """
    removed = 0
    for leaf in output(["docker", "images", "--filter", "dangling=true", "--quiet", "--no-trunc"])[1].split():
        if leaf == old:
            continue
        parent = leaf
        while parent and parent != old:
            parent = inspect(parent, "{{.Parent}}")
        if parent == old and succeeds(["docker", "image", "rm", leaf]):
            removed += 1
    if removed:
        log(f"removed {removed} stale build-cache image(s) built on {old[7:19]}")
