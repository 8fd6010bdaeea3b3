"""A feature's training distribution: the contract between training and the edge's drift monitor.

Training stores one `FeatureReference` per device and feature in the bundle manifest
(`devices[<id>].feature_reference`, as text: `to_text` / `from_text`); the inference module's
drift monitor bins live values against it and judges the population stability index (`psi`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "MAX_BINS",
    "PROPORTION_FLOOR",
    "SIGNIFICANT_DIGITS",
    "FeatureReference",
    "psi",
    "reference_from_values",
    "round_significant",
]

# Share given to an empty bin, in the reference and in the observed window, so PSI stays finite.
PROPORTION_FLOOR: Final = 1e-4
MAX_BINS: Final = 100  # bin indices are stored as int8
VALUES_PER_BIN: Final = 5  # finite training values needed per bin
SIGNIFICANT_DIGITS: Final = 6
# Shares this close to 1/bins are stored as uniform: that moves a stable window's PSI by under 0.003.
UNIFORM_SHARE_TOLERANCE: Final = 0.005


def round_significant(value: float) -> float:
    """Return `value` rounded to SIGNIFICANT_DIGITS significant digits."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True, slots=True)
class FeatureReference:
    """The training distribution of one feature: interior bin edges and each bin's share of rows.

    A value v falls in bin `bisect_right(edges, v)`: bin 0 is below edges[0], bin i holds
    edges[i-1] <= v < edges[i]. `proportions` has one entry per bin, each at least PROPORTION_FLOOR
    (so they may sum to slightly more than 1).
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(
                f"a reference with {len(self.edges)} edges needs {len(self.edges) + 1} proportions, "
                f"got {len(self.proportions)}: rebuild it with reference_from_values"
            )
        if len(self.proportions) > MAX_BINS:
            raise ValueError(f"{len(self.proportions)} bins; at most {MAX_BINS} are supported: use fewer bins")
        if not all(math.isfinite(edge) for edge in self.edges) or any(
            later <= earlier for earlier, later in zip(self.edges, self.edges[1:], strict=False)
        ):
            raise ValueError(
                "reference edges must be finite and strictly increasing: rebuild with reference_from_values"
            )
        if not all(PROPORTION_FLOOR * 0.5 <= share <= 1.0 for share in self.proportions):
            raise ValueError(
                f"reference proportions must lie in [{PROPORTION_FLOOR:g}, 1]: rebuild with reference_from_values"
            )
        total = math.fsum(self.proportions)
        if abs(total - 1.0) > 0.01:
            raise ValueError(f"reference proportions sum to {total:.4f}, not 1: rebuild with reference_from_values")

    @property
    def bins(self) -> int:
        """Return the number of bins."""
        return len(self.proportions)

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """Return how many of the finite `values` fall in each bin."""
        values = np.asarray(values, dtype=float).ravel()
        finite = values[np.isfinite(values)]
        indices = np.searchsorted(np.asarray(self.edges), finite, side="right")
        return np.bincount(indices, minlength=self.bins)

    def to_text(self) -> str:
        """Return the compact text form stored in the bundle manifest: `edges[ | shares]`.

        The shares are left out when every bin holds 1/bins of the rows within
        UNIFORM_SHARE_TOLERANCE, the usual case for quantile bins.
        """
        edges = " ".join(f"{edge:.{SIGNIFICANT_DIGITS}g}" for edge in self.edges)
        uniform = 1.0 / self.bins
        if all(abs(share - uniform) <= UNIFORM_SHARE_TOLERANCE for share in self.proportions):
            return edges
        return edges + " | " + " ".join(f"{share:.{SIGNIFICANT_DIGITS}g}" for share in self.proportions)

    @classmethod
    def from_text(cls, text: object) -> FeatureReference:
        """Parse the text form written by `to_text`; raise ValueError saying what is wrong."""
        example = '"13.8 15.3 16.9" (edges), or "13.8 15.3 | 0.3 0.3 0.4" (edges | shares)'
        if not isinstance(text, str) or text.count("|") > 1:
            raise ValueError(f"a feature reference is a string like {example}")
        edges_text, _, shares_text = text.partition("|")
        try:
            edges = tuple(float(item) for item in edges_text.split())
            shares = tuple(float(item) for item in shares_text.split())
        except ValueError:
            raise ValueError(f"feature reference {text[:80]!r} holds something other than numbers: {example}") from None
        if not edges:
            raise ValueError(f"feature reference {text[:80]!r} has no bin edges: {example}")
        return cls(edges, shares or (1.0 / (len(edges) + 1),) * (len(edges) + 1))


def reference_from_values(values: np.ndarray, bins: int = 10) -> FeatureReference:
    """Return the reference distribution of a feature's training values (non-finite values are ignored).

    Edges are the training quantiles, rounded to 6 significant digits and deduplicated. Where a
    value holds more than one quantile (a point mass, e.g. a sensor that mostly reads 0, or constant
    data), it gets a bin of its own just above it, so mass moving off it still shows.
    """
    if not 2 <= bins <= MAX_BINS - 2:  # two more bins may be added around point masses
        raise ValueError(f"bins={bins}: choose between 2 and {MAX_BINS - 2} (10 is usual)")
    array = np.asarray(values, dtype=float).ravel()
    finite = array[np.isfinite(array)]
    needed = bins * VALUES_PER_BIN
    if finite.size < needed:
        hint = f"use bins={finite.size // VALUES_PER_BIN}" if finite.size >= 2 * VALUES_PER_BIN else "skip it"
        raise ValueError(
            f"{finite.size} finite values for a {bins}-bin reference; need at least {needed} "
            f"({VALUES_PER_BIN} per bin): {hint}, or train on more rows"
        )
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    exact, repeats = np.unique(quantiles, return_counts=True)
    masses = exact[repeats > 1].tolist() if finite.min() < finite.max() else [float(finite[0])]
    scale = float(np.max(np.abs(finite))) or 1.0
    edges_set = {round_significant(q) for q in exact.tolist() if q not in masses}
    for mass in masses:
        # [below, above) holds exactly the point mass: both are 6-digit values, below <= mass < above.
        below = round_significant(mass)
        if below > mass:
            below = round_significant(mass - abs(mass) * 1e-5)
        edges_set.update((below, round_significant(mass + 1e-4 * max(abs(mass), 1e-6 * scale))))
    edges = np.array(sorted(edges_set))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    shares = np.maximum(counts / finite.size, PROPORTION_FLOOR)
    return FeatureReference(tuple(edges.tolist()), tuple(round_significant(float(share)) for share in shares))


def psi(reference: FeatureReference, counts: np.ndarray) -> float:
    """Return the population stability index of observed bin `counts` against `reference`."""
    observed = np.asarray(counts, dtype=float).ravel()
    if observed.size != reference.bins:
        raise ValueError(f"{observed.size} counts for a reference with {reference.bins} bins: count with bin_counts")
    total = observed.sum()
    if not total > 0:
        raise ValueError("no observations: PSI needs at least one counted value")
    shares = np.maximum(observed / total, PROPORTION_FLOOR)
    expected = np.maximum(np.asarray(reference.proportions), PROPORTION_FLOOR)
    return float(np.sum((shares - expected) * np.log(shares / expected)))
