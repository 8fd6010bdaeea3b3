"""Device physics: the one place that decides how a simulated device behaves.

Each device has hidden parameters drawn from (seed, device_id). Its features follow
daily cycles plus noise; its label follows a device-specific relation of those
features. The relations differ enough between devices that a model per device beats
one fleet model. `generate-history` and the simulator both sample from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

FEATURES: tuple[str, ...] = ("temperature_c", "humidity_pct", "vibration_mm_s", "load_pct")
RELATION_KINDS: tuple[str, ...] = ("linear", "saturating", "threshold")
DAY_S = 86_400.0

# Feature scales used to standardise inputs inside the hidden relation, so that the
# weights below are comparable between features.
_FEATURE_CENTER = np.array([20.0, 50.0, 2.0, 50.0])
_FEATURE_SCALE = np.array([6.0, 12.0, 1.5, 25.0])


@dataclass(frozen=True)
class DeviceProfile:
    """Hidden parameters of one device: how its features move and what its label is."""

    device_id: str
    kind: str
    weights: tuple[float, float, float, float]
    bias: float
    curvature: float
    threshold: float
    jump: float
    noise_sd: float
    phase_rad: float
    load_period_s: float

    def features(self, ts_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return an (n, 4) array of features at the given epoch seconds."""
        ts_s = np.asarray(ts_s, dtype=float)
        n = ts_s.shape[0]
        day_angle = 2.0 * np.pi * ts_s / DAY_S + self.phase_rad
        load_angle = 2.0 * np.pi * ts_s / self.load_period_s
        temperature = 20.0 + 7.0 * np.sin(day_angle) + rng.normal(0.0, 1.0, n)
        humidity = 50.0 - 12.0 * np.sin(day_angle) + rng.normal(0.0, 3.0, n)
        vibration = rng.gamma(2.0, 1.0, n)
        load = np.clip(50.0 + 30.0 * np.sin(load_angle) + rng.normal(0.0, 8.0, n), 0.0, 100.0)
        return np.column_stack([temperature, humidity, vibration, load])

    def label(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Return the device's label for features `x`; noisy when `rng` is given."""
        z = (np.atleast_2d(x) - _FEATURE_CENTER) / _FEATURE_SCALE
        w = np.asarray(self.weights)
        if self.kind == "linear":
            y = self.bias + z @ w
        elif self.kind == "saturating":
            y = self.bias + w[0] * np.tanh(self.curvature * z[:, 3]) * 3.0 + z[:, :3] @ w[:3]
        else:  # threshold: a regime switch trees capture and a linear model does not
            y = self.bias + z @ w + self.jump * (z[:, 2] > self.threshold)
        if rng is not None:
            y = y + rng.normal(0.0, self.noise_sd, y.shape[0])
        return np.asarray(y, dtype=float)


def device_seed(seed: int, device_id: str) -> int:
    """Derive a stable per-device seed, independent of fleet size and order."""
    digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_profile(device_id: str, seed: int) -> DeviceProfile:
    """Draw the hidden parameters of `device_id` under fleet seed `seed`."""
    rng = np.random.default_rng(device_seed(seed, device_id))
    kind = RELATION_KINDS[int(rng.integers(len(RELATION_KINDS)))]
    weights = rng.normal(0.0, 2.5, 4)
    return DeviceProfile(
        device_id=device_id,
        kind=kind,
        weights=(float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])),
        bias=float(rng.uniform(5.0, 25.0)),
        curvature=float(rng.uniform(0.5, 3.0)),
        threshold=float(rng.uniform(-0.2, 0.8)),
        jump=float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)),
        noise_sd=float(rng.uniform(0.2, 0.8)),
        phase_rad=float(rng.uniform(0.0, 2.0 * np.pi)),
        load_period_s=float(rng.uniform(2.0, 12.0) * 3600.0),
    )


def device_ids(n_devices: int) -> list[str]:
    """Return the fleet's device ids, `dev-00000` upwards."""
    return [f"dev-{i:05d}" for i in range(n_devices)]
