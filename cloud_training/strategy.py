"""The fleet-wide check: do the per-device choices beat serving one kind everywhere?

Each device chooses what it serves on its inner slice, so those rows cannot also judge the
choosing: with a handful of inner rows per device, some choices win there by luck, and evidence
that is too thin per device is plenty pooled over a fleet. So every device also chooses on the
OLDER half of its inner slice alone and reports each kind's squared error on the NEWER half
(`device_training.check_halves`). Pooled over the fleet, that is an honest estimate of the
per-device policy on rows it did not choose on, next to each kind served everywhere on the same
rows. The lowest wins; near-ties (CHECK_MARGIN) go to the simpler, in STRATEGIES' order:

- `fleet`: every device serves the fleet model (status `fallback`, reason `fleet_strategy`);
- `fleet_corrected`: every device serves the fleet model plus its own shrunk offset;
- `per_device`: each device keeps its own choice;
- `device`: every device serves its own model (a fleet of unrelated devices).

The uniform kinds win where each device's evidence is too thin to choose well but the fleet's,
pooled, is not. The check is cautious by construction: its per-device choices see half the inner
rows that the served choices see.

The final slice plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cloud_training.device_training import CHECK_COLUMNS, gate_stale_devices

__all__ = ["FLEET_STRATEGY", "StrategyCheck", "apply_strategy", "check_strategy", "settle_choices"]

FLEET_STRATEGY = "fleet_strategy"  # the reason of a device moved to the fleet model by the fleet-wide check
STRATEGIES = ("fleet", "fleet_corrected", "per_device", "device")  # simplest first
# A strategy must beat the best simpler one by this share of its MSE: near-ties go to the simpler.
CHECK_MARGIN = 0.01


@dataclass(frozen=True)
class StrategyCheck:
    """The pooled check: the per-device policy's and the fleet model's MSE on the inner slices' newer halves."""

    strategy: str  # one of STRATEGIES
    devices: int
    rows: int
    per_device_mse: float | None
    fleet_mse: float | None
    corrected_mse: float | None = None
    device_mse: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the check as the summary and MLflow record it."""
        return {
            "strategy": self.strategy,
            "devices": self.devices,
            "rows": self.rows,
            "per_device_mse": self.per_device_mse,
            "fleet_mse": self.fleet_mse,
            "corrected_mse": self.corrected_mse,
            "device_mse": self.device_mse,
        }


# What a device needs to serve each kind, and how the detail names it.
_NEEDS = {"fleet": "inner_fleet_mse", "fleet_corrected": "correction", "device": "joblib_blob"}
_WHAT = {"fleet": "the fleet model", "fleet_corrected": "the fleet model + its offset", "device": "its own model"}


def _checked(results: pd.DataFrame) -> pd.DataFrame:
    """Return the served devices whose check halves are complete and finite."""
    served = results[results["status"].isin(["trained", "fallback"]) & (results["check_rows"].fillna(0) > 0)]
    complete = served[list(CHECK_COLUMNS.values())].notna().all(axis=1) & served["check_kind"].notna()
    return served[complete]


def check_strategy(results: pd.DataFrame) -> StrategyCheck:
    """Return which of the per-device choices, the fleet model or own models everywhere did best on the check halves."""
    checked = _checked(results)
    rows = int(checked["check_rows"].sum())
    if rows == 0:
        return StrategyCheck("per_device", 0, 0, None, None)
    policy_sse = sum(
        float(checked.loc[checked["check_kind"] == kind, column].sum()) for kind, column in CHECK_COLUMNS.items()
    )
    mse = {kind: float(checked[column].sum()) / rows for kind, column in CHECK_COLUMNS.items()}
    mse["per_device"] = policy_sse / rows
    strategy = STRATEGIES[0]
    for candidate in STRATEGIES[1:]:
        if mse[candidate] < mse[strategy] * (1.0 - CHECK_MARGIN):
            strategy = candidate
    return StrategyCheck(
        strategy, len(checked), rows, mse["per_device"], mse["fleet"], mse["fleet_corrected"], mse["device"]
    )


def apply_strategy(results: pd.DataFrame, check: StrategyCheck) -> pd.DataFrame:
    """Return the results with every served device on one kind when the check chose one kind for all."""
    if check.strategy == "per_device":
        return results
    kind = check.strategy
    served = results["status"].isin(["trained", "fallback"]) & results["kind"].notna()
    moved = served & results[_NEEDS[kind]].notna() & (results["kind"] != kind)
    if not moved.any():
        return results
    results = results.copy()
    detail = (
        f"the fleet-wide check chose {_WHAT[kind]} for every device: mse fleet {check.fleet_mse:.4g}, "
        f"fleet + offsets {check.corrected_mse:.4g}, per-device choices {check.per_device_mse:.4g}, own models "
        f"{check.device_mse:.4g} over {check.rows:,} rows of {check.devices:,} devices"
    )
    status, reason = ("fallback", FLEET_STRATEGY) if kind == "fleet" else ("trained", None)
    results.loc[moved, ["status", "reason", "detail", "kind"]] = [status, reason, detail, kind]
    prefix = {"fleet": "fleet", "fleet_corrected": "corrected", "device": "device"}[kind]
    for metric in ("mse", "mae", "r2"):
        results.loc[moved, metric] = results.loc[moved, f"{prefix}_{metric}"]
    return results


def settle_choices(results: pd.DataFrame, max_staleness_days: float) -> pd.DataFrame:
    """Return the results after the driver's fleet-wide steps: the staleness gate, then the strategy check."""
    results = gate_stale_devices(results, max_staleness_days)
    return apply_strategy(results, check_strategy(results))
