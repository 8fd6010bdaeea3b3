"""Errors of the simulator that carry a message meant for the user."""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class SimulatorError(EdgefleetError):
    """Raise when the simulator cannot run: broker unreachable, bad replay file, bad settings."""


class ProfileError(SimulatorError):
    """Raise when a simulator profile cannot be read or breaks the profile schema."""
