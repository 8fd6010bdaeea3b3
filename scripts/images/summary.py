"""The closing summary: each image's size and build/check seconds, the layers they share, the steps' wall clock."""

from __future__ import annotations

from collections.abc import Sequence

from scripts.images.build import Built
from scripts.images.catalog import IMAGES
from scripts.images.common import Timings, echo, output
from scripts.images.docker import inspect
from scripts.images.settings import Settings

__all__ = ["print_summary"]


def print_summary(settings: Settings, built: dict[str, Built], timings: Timings, total_s: float) -> None:
    """Print what was built, what the images share on disk, and how long each step took."""
    echo("")
    echo(f"== build_images summary ({settings.project} {settings.version}, revision {settings.revision}) ==")
    echo(f"{'IMAGE':<48} {'SIZE':>10} {'BUILD_S':>8} {'CHECK_S':>8}")
    refs: list[str] = []
    for image in IMAGES:
        if image.name not in built:
            continue
        row = built[image.name]
        refs.append(row.tags[0])
        echo(f"{row.tags[0]:<48} {megabytes(row.tags[0]):>7} MB {row.build_s:>8.1f} {row.check:>8}")
        for tag in row.tags[1:]:
            echo(f"  also tagged {tag}")
    for flavour in settings.flavours:
        refs.append(flavour.image)
        echo(f"{flavour.image + ' (base)':<48} {megabytes(flavour.image):>7} MB {'-':>8} {'-':>8}")
    echo("")
    echo("shared layers:")
    print_layers(refs)
    echo("")
    echo("steps (wall clock; the base images and the wheelhouse run side by side, so do the two build lanes):")
    for step, seconds in timings.steps:
        echo(f"  {step:<40} {seconds:>8.1f} s")
    echo(f"  {'total':<40} {total_s:>8.1f} s")


def megabytes(ref: str) -> str:
    """The image's size in MB, one decimal."""
    size = inspect(ref, "{{.Size}}")
    return f"{int(size) / 1e6:.1f}" if size.isdigit() else "?"


def print_layers(refs: Sequence[str]) -> None:
    """Per image the size of the layers no other image here has, and all of them on disk together.

    The classic builder names every layer's image, so equal ids are shared layers.
    """
    size: dict[str, int] = {}
    layers: dict[str, set[str]] = {}
    for ref in refs:
        history = output(["docker", "history", "--no-trunc", "--human=false", "--format", "{{.ID}} {{.Size}}", ref])[1]
        layers[ref] = set()
        for line in history.splitlines():
            layer, _, layer_size = line.partition(" ")
            if layer != "<missing>" and layer_size.isdigit():
                size[layer] = int(layer_size)
                layers[ref].add(layer)
    users: dict[str, int] = {}
    for ids in layers.values():
        for layer in ids:
            users[layer] = users.get(layer, 0) + 1
    for ref, ids in layers.items():
        own = sum(size[layer] for layer in ids if users[layer] == 1)
        echo(f"  {ref:<46} {own / 1e6:7.1f} MB in layers no other image here has")
    echo(f"  all of the above together: {sum(size.values()) / 1e6:.1f} MB on disk (shared layers counted once)")
