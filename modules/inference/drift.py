"""Per-device drift monitoring at the edge: tell when a device's model stops describing the device.

Two signals, judged per device on a rolling window of its own readings:

- **residual drift** (concept drift): the rolling mean squared error of the served predictions
  against the labels the device reports, divided by the model's hold-out MSE from training.
  A device whose hidden relation changed sees this ratio jump; a healthy one stays near 1.
- **feature drift** (covariate drift): the population stability index (PSI) of each feature's
  recent values against its training distribution, binned at the training quantiles
  (`FeatureReference`, stored per device and feature in the bundle manifest at training time).

Alerts use hysteresis: one alert when a metric crosses its threshold, and nothing more until it
has fallen below `rearm_fraction` x the threshold. `drifting_devices()` is the set to mark for
retraining.

Devices served by the fleet model (no model of their own, or a poor one) are judged for residual
drift against the fleet model's hold-out MSE, given as `holdout_mse["__fleet__"]`, and for feature
drift wherever training stored a reference for them (a `poor_model` device has one; a device never
seen in training has none). A device served by its own model or by the fleet model plus its own
correction (`fleet_corrected`) is judged against its own entry's hold-out MSE, the error of that
served kind on its hold-out (`modules.inference.bundle.drift_monitor_for` gives it as
`holdout_mse[device_id]`). A reading predicted on filled-in features is judged only on the
features it carries; the caller passes no label for it, because its error measures the fill.

Memory is bounded: each device gets fixed-size numpy ring buffers (float32 squared residuals,
int8 bin indices per feature) on its first reading, and `observe` keeps no per-reading Python
object. This module imports only numpy, the standard library and the contracts package: it runs
inside the edge inference image.

Feature windows must span the features' own cycles: 400 consecutive readings of a device reporting
once a second cover 7 minutes of a daily temperature cycle and would differ from any training
distribution. The feature window therefore keeps at most one reading per `feature_interval_s` of
the readings' own time (`ts`), so its 400 slots of 216 s span at least one day whatever the
device's rate, and PSI is judged only on a full window. Measured on the simulator's stable devices
(10 days each): the largest PSI of any feature was 0.11 with this window, and 0.21 with 200 slots
of 432 s, too close to the 0.25 threshold.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np

from edgefleet.alerts import DriftAlert
from edgefleet.feature_reference import PROPORTION_FLOOR, FeatureReference
from edgefleet.messages import format_ts

logger = logging.getLogger(__name__)

__all__ = [
    "FLEET_KEY",
    "DriftMonitor",
    "DriftSettings",
    "DriftStatus",
]

# Median of a squared standard normal (chi-squared, 1 degree of freedom): median(e^2) = 0.455 MSE.
MEDIAN_SQUARED_NORMAL: Final = 0.4549364
FLEET_KEY: Final = "__fleet__"  # key of the fleet model's hold-out MSE in `holdout_mse`
_MAX_SQUARED: Final = 1e30  # squared residuals are clipped here, so float32 buffers never hold inf
_MISSING_BIN: Final = -1  # a NaN feature value: it takes its window slot but no bin


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How drift is judged: residuals over the latest 200 labelled readings, features over one day."""

    window_readings: int = 200  # labelled readings per device kept for residual drift
    min_readings: int = 50  # labelled readings before residual drift is judged
    feature_window_readings: int = 400  # feature slots per device kept for feature drift
    # Values a feature needs in a full window (a partial day is biased) to be judged; a few slots
    # may lack it (a reading without that feature), so one missing value does not blind it for a day.
    min_feature_readings: int = 360
    residual_ratio_threshold: float = (
        5.0  # rolling MSE / hold-out MSE that counts as drift (3 raised false alarms in the demo)
    )
    psi_threshold: float = 0.25  # PSI that counts as drift (0.1 moderate, 0.25 large, by convention)
    rearm_fraction: float = 0.7  # a metric re-arms its alert once below this x its threshold
    # The feature window keeps one reading per slot of this many seconds of reading time, so it
    # spans feature_window_readings x feature_interval_s (400 x 216 s = one day); 0 keeps every reading.
    feature_interval_s: float = 216.0
    max_devices: int = 20_000  # devices tracked at most; later newcomers are not monitored
    # A reading in which some feature has shown the same value this many times in a row (a stuck
    # sensor) is not judged: its error measures the sensor fault, not the model. 0 judges all.
    flatline_readings: int = 3

    def __post_init__(self) -> None:
        for name in (
            "window_readings",
            "feature_window_readings",
            "min_readings",
            "min_feature_readings",
            "max_devices",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a whole number >= 1")
        for name, usual in (("window_readings", 200), ("feature_window_readings", 400)):
            if not 10 <= getattr(self, name) <= 100_000:
                raise ValueError(f"{name}={getattr(self, name)}: choose between 10 and 100000 ({usual} is usual)")
        for name, window_name in (
            ("min_readings", "window_readings"),
            ("min_feature_readings", "feature_window_readings"),
        ):
            if getattr(self, name) > getattr(self, window_name):
                raise ValueError(
                    f"{name}={getattr(self, name)} exceeds {window_name}={getattr(self, window_name)}: "
                    f"lower it or enlarge the window"
                )
        for name in ("residual_ratio_threshold", "psi_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name}={value!r}: must be a positive finite number")
        if self.residual_ratio_threshold <= 1.0:
            raise ValueError(
                f"residual_ratio_threshold={self.residual_ratio_threshold}: must exceed 1 (a healthy model's "
                f"rolling MSE is about its hold-out MSE); 5.0 is the default"
            )
        value = self.feature_interval_s
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise ValueError(
                f"feature_interval_s={value!r}: must be a finite number of seconds >= 0 "
                f"(216 makes a 400-slot window span one day; 0 keeps every reading)"
            )
        value = self.rearm_fraction
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"rearm_fraction={value!r}: must lie strictly between 0 and 1 (0.7 is usual)")


@dataclass(frozen=True, slots=True)
class DriftStatus:
    """A device's drift state right now (None: not judged yet, or nothing to judge against)."""

    device_id: str
    readings_seen: int
    residual_ratio: float | None
    worst_feature: str | None
    worst_psi: float | None
    drifting: bool
    flatlined: int = 0  # readings not judged because a feature was stuck


class _Device:
    """The monitor's state of one device: ring buffers and alert flags, nothing per reading."""

    __slots__ = (
        "bins",
        "counts",
        "edges",
        "expected",
        "feature_alerting",
        "feature_full",
        "feature_pos",
        "feature_slot",
        "flatlined",
        "holdout_mse",
        "last_values",
        "log_expected",
        "n_valid",
        "names",
        "repeats",
        "residual_alerting",
        "rows",
        "seen",
        "squared",
        "squared_n",
        "squared_pos",
        "squared_sum",
    )

    def __init__(
        self,
        window: int,
        feature_window: int,
        holdout_mse: float | None,
        references: Sequence[tuple[int, str, FeatureReference]],
    ) -> None:
        self.seen = 0
        self.holdout_mse = holdout_mse
        self.squared = np.zeros(window, dtype=np.float32) if holdout_mse is not None else None
        self.squared_pos = 0
        self.squared_n = 0
        self.squared_sum = 0.0
        self.residual_alerting = False
        # Feature rows: position in the reading, name and edges of each feature with a reference.
        self.rows = tuple(position for position, _, _ in references)
        self.names = tuple(name for _, name, _ in references)
        self.edges = tuple(reference.edges for _, _, reference in references)
        self.feature_pos = 0
        self.feature_full = False  # every slot of the feature window has been written once
        self.feature_slot = -math.inf  # the latest feature slot a reading was recorded in
        self.last_values: list[float] = []  # the previous reading's features (flatline check)
        self.repeats: list[int] = []  # how many readings in a row each feature has kept its value
        self.flatlined = 0
        self.feature_alerting = [False] * len(references)
        if references:
            width = max(reference.bins for _, _, reference in references)
            expected = np.full((len(references), width), PROPORTION_FLOOR)
            for row, (_, _, reference) in enumerate(references):
                expected[row, : reference.bins] = np.maximum(reference.proportions, PROPORTION_FLOOR)
            self.expected: np.ndarray | None = expected
            self.log_expected: np.ndarray | None = np.log(expected)
            self.bins: np.ndarray | None = np.full((len(references), feature_window), _MISSING_BIN, dtype=np.int8)
            self.counts: np.ndarray | None = np.zeros((len(references), width), dtype=np.int32)
            self.n_valid: np.ndarray | None = np.zeros(len(references), dtype=np.int32)
        else:
            self.expected = self.log_expected = self.bins = self.counts = self.n_valid = None

    def arrays(self) -> list[np.ndarray]:
        """Return the device's numpy arrays."""
        candidates = (self.squared, self.bins, self.counts, self.n_valid, self.expected, self.log_expected)
        return [array for array in candidates if array is not None]

    def residual_ratio(self, min_readings: int) -> float | None:
        """Return rolling MSE / hold-out MSE, or None before `min_readings` labelled readings."""
        if self.holdout_mse is None or self.squared_n < min_readings:
            return None
        return max(self.squared_sum, 0.0) / self.squared_n / self.holdout_mse

    def robust_residual_ratio(self, recent: int) -> float | None:
        """Return the median of the `recent` latest squared residuals over what normal hold-out errors give."""
        if self.holdout_mse is None or self.squared is None or self.squared_n == 0:
            return None
        window = self.squared.shape[0]
        latest = (self.squared_pos - 1 - np.arange(min(recent, self.squared_n))) % window
        median = float(np.median(self.squared[latest]))
        return median / (MEDIAN_SQUARED_NORMAL * self.holdout_mse)

    def psi_values(self) -> np.ndarray:
        """Return the PSI of every referenced feature's window (rows without values give 0)."""
        assert self.counts is not None and self.n_valid is not None
        assert self.expected is not None and self.log_expected is not None
        shares = self.counts / np.maximum(self.n_valid, 1)[:, None]
        np.maximum(shares, PROPORTION_FLOOR, out=shares)
        return np.asarray(((shares - self.expected) * (np.log(shares) - self.log_expected)).sum(axis=1))


class DriftMonitor:
    """Judge each device's residual and feature drift on rolling windows, with hysteresis."""

    def __init__(
        self,
        settings: DriftSettings,
        references: Mapping[str, Mapping[str, FeatureReference]],
        holdout_mse: Mapping[str, float],
        features: Sequence[str],
    ) -> None:
        if not features or len(set(features)) != len(features):
            raise ValueError(f"features {list(features)!r}: give each model input feature once, in model order")
        for device_id, mse in holdout_mse.items():
            if isinstance(mse, bool) or not isinstance(mse, int | float) or not 0 < mse < math.inf:
                raise ValueError(
                    f"holdout_mse[{device_id!r}]={mse!r}: must be a positive finite number; "
                    f"leave the device out to skip its residual drift"
                )
        self.settings = settings
        self.features = tuple(features)
        self._references = references
        self._holdout_mse = holdout_mse
        self._devices: dict[str, _Device] = {}
        self._drifting: set[str] = set()
        self._refused = 0
        self.flatlined_readings = 0  # readings not judged because a sensor was stuck, all devices

    def _admit(self, device_id: str) -> _Device | None:
        """Create the state of a device seen for the first time (None: over max_devices)."""
        if len(self._devices) >= self.settings.max_devices:
            if self._refused == 0:
                logger.warning(
                    "Drift monitor holds %d devices (max_devices); newer devices such as %s are not monitored",
                    len(self._devices),
                    device_id,
                )
            self._refused += 1
            return None
        holdout = self._holdout_mse.get(device_id, self._holdout_mse.get(FLEET_KEY))
        # References are looked up on a device's first reading, so a lazy mapping (the bundle
        # manifest's 10,000 devices) costs nothing at start.
        by_feature = self._references.get(device_id) or {}
        references = []
        for position, name in enumerate(self.features):
            reference = by_feature.get(name)
            if reference is None:
                continue
            if not isinstance(reference, FeatureReference):
                raise ValueError(
                    f"references[{device_id!r}][{name!r}] is a {type(reference).__name__}: "
                    f"parse it with FeatureReference.from_text"
                )
            references.append((position, name, reference))
        device = _Device(self.settings.window_readings, self.settings.feature_window_readings, holdout, references)
        self._devices[device_id] = device
        return device

    def observe(
        self, device_id: str, features: Sequence[float], prediction: float, label: float | None, ts: datetime
    ) -> list[DriftAlert]:
        """Add one reading (features in `self.features` order, `ts` its UTC time) and return the alerts it raises."""
        if len(features) != len(self.features):
            raise ValueError(f"{len(features)} feature values for {len(self.features)} features {self.features}")
        device = self._devices.get(device_id)
        if device is None:
            device = self._admit(device_id)
            if device is None:
                return []
        device.seen += 1
        if self.settings.flatline_readings and self._flatlined(device, features):
            device.flatlined += 1
            self.flatlined_readings += 1
            return []
        alerts: list[DriftAlert] = []
        if device.squared is not None and label is not None:
            self._add_residual(device_id, device, prediction - label, ts, alerts)
        if device.bins is not None:
            interval_s = self.settings.feature_interval_s
            slot = ts.timestamp() // interval_s if interval_s else float(device.seen)
            # One reading per slot: a late (reordered) reading of an earlier slot is not recorded.
            if slot > device.feature_slot:
                device.feature_slot = slot
                self._add_features(device_id, device, features, ts, alerts)
        return alerts

    def _flatlined(self, device: _Device, features: Sequence[float]) -> bool:
        """Track each feature's run of equal values; say whether one has reached flatline_readings."""
        last, repeats = device.last_values, device.repeats
        if not last:
            device.last_values, device.repeats = list(features), [1] * len(features)
            return False
        need = self.settings.flatline_readings
        stuck = False
        for j, value in enumerate(features):
            if value == last[j]:
                repeats[j] += 1
                stuck = stuck or repeats[j] >= need
            else:
                last[j] = value
                repeats[j] = 1
        return stuck

    def _add_residual(
        self, device_id: str, device: _Device, error: float, ts: datetime, alerts: list[DriftAlert]
    ) -> None:
        """Push one squared residual into the device's ring buffer and judge the rolling MSE."""
        squared = error * error
        if squared != squared:  # NaN prediction or label: nothing to learn
            return
        squared = min(squared, _MAX_SQUARED)
        buffer = device.squared
        assert buffer is not None
        window = buffer.shape[0]
        pos = device.squared_pos
        if device.squared_n == window:
            device.squared_sum -= float(buffer[pos])
        else:
            device.squared_n += 1
        buffer[pos] = squared
        device.squared_sum += float(buffer[pos])  # the float32 value stored, so the sum matches the buffer
        pos += 1
        if pos == window:
            pos = 0
            device.squared_sum = float(buffer.sum(dtype=np.float64))  # drop accumulated rounding once per window
        device.squared_pos = pos
        settings = self.settings
        ratio = device.residual_ratio(settings.min_readings)
        if ratio is None:
            return
        threshold = settings.residual_ratio_threshold
        # The rolling mean is the cheap first test; a few faulty readings (a spike, a stuck sensor)
        # can lift it alone, so a crossing is confirmed on the median of the latest `min_readings`
        # squared residuals, which sparse faults do not move and a changed relation does.
        if not device.residual_alerting and ratio >= threshold:
            robust = device.robust_residual_ratio(settings.min_readings)
            if robust is not None and robust >= threshold:
                device.residual_alerting = True
                self._drifting.add(device_id)
                alerts.append(
                    DriftAlert(device_id, "residual", robust, threshold, None, device.squared_n, format_ts(ts))
                )
                logger.warning(
                    "Residual drift on %s: squared residuals %.3gx the hold-out's at %s",
                    device_id,
                    robust,
                    ts.isoformat(),
                )
        elif device.residual_alerting and ratio < threshold * settings.rearm_fraction:
            device.residual_alerting = False
            self._settle(device_id, device)

    def _add_features(
        self, device_id: str, device: _Device, values: Sequence[float], ts: datetime, alerts: list[DriftAlert]
    ) -> None:
        """Push one reading's feature bins into the device's ring buffer and judge each feature's PSI."""
        bins, counts, n_valid = device.bins, device.counts, device.n_valid
        assert bins is not None and counts is not None and n_valid is not None
        pos = device.feature_pos
        for row, (position, edges) in enumerate(zip(device.rows, device.edges, strict=True)):
            old = int(bins[row, pos])
            if old != _MISSING_BIN:
                counts[row, old] -= 1
                n_valid[row] -= 1
            value = values[position]
            if value != value:  # NaN: skipped, but it still takes its slot so the window stays aligned
                bins[row, pos] = _MISSING_BIN
                continue
            new = bisect_right(edges, value)
            bins[row, pos] = new
            counts[row, new] += 1
            n_valid[row] += 1
        pos += 1
        if pos == bins.shape[1]:
            pos = 0
            device.feature_full = True
        device.feature_pos = pos
        if not device.feature_full:
            return
        settings = self.settings
        judged = n_valid >= settings.min_feature_readings
        if not judged.any():
            return
        threshold = settings.psi_threshold
        rearm = threshold * settings.rearm_fraction
        alerting = device.feature_alerting
        changed = False
        for row, value in enumerate(device.psi_values().tolist()):
            if not judged[row]:
                continue
            if not alerting[row] and value >= threshold:
                alerting[row] = changed = True
                name = device.names[row]
                alerts.append(
                    DriftAlert(device_id, "feature", value, threshold, name, int(n_valid[row]), format_ts(ts))
                )
                logger.warning("Feature drift on %s: %s has PSI %.3g at %s", device_id, name, value, ts.isoformat())
            elif alerting[row] and value < rearm:
                alerting[row] = False
                changed = True
        if changed:
            if any(alerting):
                self._drifting.add(device_id)
            else:
                self._settle(device_id, device)

    def _settle(self, device_id: str, device: _Device) -> None:
        """Take the device off the drifting set once no signal is alerting."""
        if not device.residual_alerting and not any(device.feature_alerting):
            self._drifting.discard(device_id)
            logger.info("Drift on %s has receded below the re-arm level", device_id)

    def status(self, device_id: str) -> DriftStatus:
        """Return the device's current drift state (all empty for a device not seen yet)."""
        device = self._devices.get(device_id)
        if device is None:
            return DriftStatus(device_id, 0, None, None, None, False)
        worst_feature = worst_psi = None
        if device.n_valid is not None and device.feature_full:
            judged = device.n_valid >= self.settings.min_feature_readings
            if judged.any():
                values = np.where(judged, device.psi_values(), -np.inf)
                row = int(np.argmax(values))
                worst_feature, worst_psi = device.names[row], float(values[row])
        return DriftStatus(
            device_id,
            device.seen,
            device.residual_ratio(self.settings.min_readings),
            worst_feature,
            worst_psi,
            device_id in self._drifting,
            device.flatlined,
        )

    def drifting_devices(self) -> list[str]:
        """Return the devices whose drift alert is active (to mark for retraining), sorted."""
        return sorted(self._drifting)

    def buffer_nbytes(self) -> int:
        """Return the bytes held by all devices' numpy arrays (ring buffers, counts, references)."""
        return sum(array.nbytes for device in self._devices.values() for array in device.arrays())

    @property
    def device_count(self) -> int:
        """Return how many devices are monitored."""
        return len(self._devices)
