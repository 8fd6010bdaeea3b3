"""The settings of one build, read once from the command line, the environment and the checkout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.images.catalog import FLAVOURS, Flavour, Image
from scripts.images.common import Layout

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """What to build, from where, with what."""

    layout: Layout
    images: tuple[Image, ...]
    bundle: Path  # absolute
    rebuild_base: bool
    jobs: int  # docker builds at a time: 1 or 2
    python: str  # a CPython 3.11 with pip, for the wheelhouse
    mirror: str
    security_mirror: str
    project: str
    version: str
    revision: str
    bundle_version: str  # "" when the inference image is not built

    @property
    def flavours(self) -> tuple[Flavour, ...]:
        """The base flavours the selected images need, in the catalog's order."""
        return tuple(f for f in FLAVOURS if any(i.flavour == f.name for i in self.images))

    @property
    def extras(self) -> tuple[str, ...]:
        """The wheelhouse extras the selected images need, in image order."""
        return tuple(dict.fromkeys(i.extra for i in self.images))

    def pip(self) -> list[str]:
        """The pip command of the wheelhouse's interpreter."""
        return [self.python, "-m", "pip", "--disable-pip-version-check"]
