"""Drift alerts: the `edgefleet.alert/1` messages the inference module sends to its output `alerts`.

The lake keeps them under `_events/`; the dashboard shows them and retraining reads them
(`edgefleet.lake.read_drift_alerts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from edgefleet.feature_reference import round_significant

__all__ = ["ALERT_MODULE", "ALERT_SCHEMA", "DriftAlert"]

ALERT_SCHEMA: Final = "edgefleet.alert/1"
ALERT_MODULE: Final = "inference"  # alerts leave through the inference module's output `alerts`


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One device crossed a drift threshold."""

    device_id: str
    kind: Literal["residual", "feature"]
    metric: float  # residual: rolling MSE / hold-out MSE; feature: PSI
    threshold: float
    feature: str | None  # the drifting feature (feature drift only)
    window: int  # readings the metric was computed on
    ts: str  # the reading that crossed

    def to_json_obj(self, edge_device: str | None = None) -> dict[str, Any]:
        """Return the `edgefleet.alert/1` message (kind `drift`) for the inference module's output `alerts`."""
        if self.kind == "residual":
            detail = (
                f"device {self.device_id}: rolling MSE is {self.metric:.3g}x its hold-out MSE "
                f"(threshold {self.threshold:g}) over {self.window} readings"
            )
            drift: dict[str, Any] = {"kind": "residual", "metric": "mse_ratio"}
        else:
            detail = (
                f"device {self.device_id}: feature {self.feature} has PSI {self.metric:.3g} "
                f"(threshold {self.threshold:g}) over {self.window} readings"
            )
            drift = {"kind": "feature", "metric": "psi", "feature": self.feature}
        drift.update(value=round_significant(self.metric), threshold=self.threshold, window_readings=self.window)
        return {
            "schema": ALERT_SCHEMA,
            "kind": "drift",
            "detail": detail,
            "edge_device": edge_device,
            "module": ALERT_MODULE,
            "device_id": self.device_id,
            "drift": drift,
            "ts": self.ts,
        }
