"""Turn a profile into a concrete fleet: device ids, hidden physics, effective rates and drift."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from edgefleet.messages import format_ts
from simulator.drift import drift_seed, drifted_profile
from simulator.physics import FEATURES, DeviceProfile, make_profile
from simulator.profile import SimulatorProfile, assign_device_ids

logger = logging.getLogger(__name__)

__all__ = ["NO_SHIFT", "DeviceSpec", "DriftAssignment", "DriftKind", "DriftStage", "FleetPlan", "Shift", "plan_fleet"]

DriftKind = Literal["relation", "features"]
Shift = tuple[float, float, float, float]  # added to the features, in FEATURES order
NO_SHIFT: Shift = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class DriftStage:
    """From `at_s` simulated seconds on, a device's features move by `shift` and its label follows `profile`.

    Each stage is the whole state in force: a relation stage keeps the shift of the stage before it,
    a features stage keeps its relation, so the stream only needs the latest stage that started.
    """

    at_s: float
    drift_seed: int
    profile: DeviceProfile
    shift: Shift = NO_SHIFT
    kind: DriftKind = "relation"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device: identity, measured features, effective rate and hidden relation(s)."""

    index: int
    device_id: str
    type_name: str
    features: tuple[str, ...]
    rate_per_s: float
    profile: DeviceProfile
    noise_scale: float
    drift: tuple[DriftStage, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftAssignment:
    """One drift event as planned: what kind, when, with which seed, for which devices."""

    index: int
    at_s: float
    drift_seed: int
    device_ids: tuple[str, ...]
    kind: DriftKind = "relation"
    # (feature, shift) pairs in FEATURES order; a tuple keeps the plan hashable.
    feature_shift: tuple[tuple[str, float], ...] = ()

    @property
    def shift(self) -> Shift:
        """Return the event's shift as a vector in FEATURES order (zeros for a relation event)."""
        given = dict(self.feature_shift)
        return (
            given.get(FEATURES[0], 0.0),
            given.get(FEATURES[1], 0.0),
            given.get(FEATURES[2], 0.0),
            given.get(FEATURES[3], 0.0),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """Return the event for the report: enough to rebuild every drifted relation and shifted feature."""
        obj: dict[str, Any] = {"index": self.index, "kind": self.kind, "at_s": self.at_s, "drift_seed": self.drift_seed}
        if self.kind == "features":
            obj["feature_shift"] = dict(self.feature_shift)
        obj["devices"] = list(self.device_ids)
        return obj


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """Everything the stream needs, resolved from a profile."""

    seed: int
    start_ts: datetime
    duration_s: float | None
    rate_scale: float
    devices: tuple[DeviceSpec, ...]
    drift: tuple[DriftAssignment, ...]

    @property
    def rate_per_s(self) -> float:
        """Return the fleet's total readings/s after the rate cap."""
        return sum(device.rate_per_s for device in self.devices)

    def start_ts_text(self) -> str:
        """Return the start timestamp as ISO-8601 UTC with Z."""
        return format_ts(self.start_ts)


def plan_fleet(
    profile: SimulatorProfile, *, duration_s: float | None = None, start_ts: datetime | None = None
) -> FleetPlan:
    """Resolve `profile` into a FleetPlan; `duration_s` and `start_ts` override the profile's."""
    duration = duration_s if duration_s is not None else profile.duration_s
    if start_ts is None:
        # 'now' is the one non-deterministic input: features follow the time of day.
        start_ts = (
            datetime.now(UTC).replace(microsecond=0) if profile.start_ts == "now" else _as_datetime(profile.start_ts)
        )
    total_rate_per_s = profile.total_rate_per_s
    cap = profile.rate_cap_per_s
    rate_scale = min(1.0, cap / total_rate_per_s) if cap is not None else 1.0
    if rate_scale < 1.0:
        logger.info("Scaling device rates by %.4g to respect the cap of %.0f readings/s", rate_scale, cap)
    specs: list[DeviceSpec] = []
    for device_type, ids in zip(profile.device_types, assign_device_ids(profile.device_types), strict=True):
        for device_id in ids:
            base = make_profile(device_id, profile.seed)
            if device_type.relation_kind is not None:
                base = dataclasses.replace(base, kind=device_type.relation_kind)
            specs.append(
                DeviceSpec(
                    index=len(specs),
                    device_id=device_id,
                    type_name=device_type.name,
                    features=device_type.features,
                    rate_per_s=device_type.rate_per_s * rate_scale,
                    profile=base,
                    noise_scale=device_type.noise_scale,
                )
            )
    assignments = _assign_drift(profile, specs, duration)
    stages: dict[int, list[DriftStage]] = {}
    index_of = {spec.device_id: spec.index for spec in specs}
    # Events in time order, so a device drifting twice drifts from its already drifted relation,
    # and a features event adds to the shift already in force.
    for assignment in sorted(assignments, key=lambda a: (a.at_s, a.index)):
        for device_id in assignment.device_ids:
            index = index_of[device_id]
            previous = stages[index][-1] if index in stages else None
            relation = previous.profile if previous is not None else specs[index].profile
            shift = previous.shift if previous is not None else NO_SHIFT
            if assignment.kind == "features":
                stage = DriftStage(
                    assignment.at_s, assignment.drift_seed, relation, _add(shift, assignment.shift), "features"
                )
            else:
                new_relation = drifted_profile(relation, assignment.drift_seed)
                stage = DriftStage(assignment.at_s, assignment.drift_seed, new_relation, shift, "relation")
            stages.setdefault(index, []).append(stage)
    devices = tuple(
        dataclasses.replace(spec, drift=tuple(stages[spec.index])) if spec.index in stages else spec for spec in specs
    )
    return FleetPlan(profile.seed, start_ts, duration, rate_scale, devices, tuple(assignments))


def _add(a: Shift, b: Shift) -> Shift:
    """Return the sum of two shift vectors."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def _as_datetime(value: datetime | str) -> datetime:
    assert isinstance(value, datetime)  # the profile validator leaves only 'now' as a string
    return value


def _assign_drift(
    profile: SimulatorProfile, specs: list[DeviceSpec], duration_s: float | None
) -> list[DriftAssignment]:
    """Return which devices each drift event changes, chosen deterministically from its own seed.

    Each event draws from `drift_seed(seed, index)` alone, whatever its kind, so adding an event
    after the others leaves their choices alone.
    """
    assignments = []
    for index, event in enumerate(profile.drift):
        seed = drift_seed(profile.seed, index)
        if event.at_s is not None:
            at_s = event.at_s
        else:
            assert event.at_fraction is not None and duration_s is not None  # the profile validator checked
            at_s = event.at_fraction * duration_s
        if event.devices is not None:
            chosen = tuple(event.devices)
        else:
            assert event.device_fraction is not None
            types = set(event.device_types) if event.device_types else None
            candidates = [spec.device_id for spec in specs if types is None or spec.type_name in types]
            k = min(len(candidates), max(1, round(event.device_fraction * len(candidates))))
            picks = np.random.default_rng(seed).choice(len(candidates), size=k, replace=False)
            chosen = tuple(candidates[int(i)] for i in sorted(picks))
        if duration_s is not None and at_s >= duration_s:
            logger.warning(
                "Drift event %d at %.1f s is after the run's end (%.1f s): it will not happen", index, at_s, duration_s
            )
        shift = event.feature_shift or {}
        feature_shift = tuple((name, float(shift[name])) for name in FEATURES if name in shift)
        assignments.append(DriftAssignment(index, at_s, seed, chosen, event.kind, feature_shift))
    return assignments
