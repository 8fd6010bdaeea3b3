"""What a training session produced, as numbers (summary) and pictures (plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STATUSES = ("trained", "fallback", "skipped", "failed")


def summarize(results: pd.DataFrame) -> dict[str, Any]:
    """Return counts by status and reason, and hold-out error quantiles."""
    counts = {s: int((results["status"] == s).sum()) for s in STATUSES}
    reasons = (
        results[results["reason"].notna()]
        .groupby(["status", "reason"])
        .size()
        .sort_values(ascending=False)
        .reset_index(name="devices")
    )
    modelled = results[results["mse"].notna()]
    quantiles: dict[str, dict[str, float]] = {}
    for column in ("mse", "mae", "r2", "fleet_mse"):
        values = modelled[column].dropna().to_numpy(dtype=float)
        if values.size:
            quantiles[column] = {f"p{q}": float(np.percentile(values, q)) for q in (10, 50, 90)}
    both = modelled[modelled["fleet_mse"].notna()]
    families = modelled["family"].value_counts().to_dict()
    sizes = modelled["model_bytes"].dropna().to_numpy(dtype=float)
    return {
        "devices": len(results),
        "counts": counts,
        "reasons": [
            {"status": str(status), "reason": str(reason), "devices": int(devices)}
            for status, reason, devices in reasons.itertuples(index=False)
        ],
        "quantiles": quantiles,
        "device_beats_fleet": int((both["mse"] < both["fleet_mse"]).sum()),
        "compared_with_fleet": len(both),
        "families": {str(k): int(v) for k, v in families.items()},
        "mean_model_bytes": float(sizes.mean()) if sizes.size else 0.0,
    }


def write_plots(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write PNGs of per-device hold-out error and device-vs-fleet error; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    modelled = results[results["mse"].notna()]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    if not modelled.empty:
        mse = modelled["mse"].to_numpy(dtype=float)
        bins = np.logspace(np.log10(max(mse.min(), 1e-9)), np.log10(max(mse.max(), 1e-8)), 40)
        for family, part in modelled.groupby("family"):
            ax.hist(part["mse"], bins=bins.tolist(), alpha=0.6, label=str(family))
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("hold-out MSE (log)")
    ax.set_ylabel("devices")
    ax.set_title(f"Per-device hold-out error ({len(modelled)} devices)")
    fig.tight_layout()
    paths.append(out_dir / "holdout_error.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    both = modelled[modelled["fleet_mse"].notna()]
    if not both.empty:
        colors = np.where(both["status"] == "trained", "tab:blue", "tab:orange")
        ax.scatter(both["fleet_mse"], both["mse"], s=8, c=colors, alpha=0.7)
        lo = float(min(both["mse"].min(), both["fleet_mse"].min()))
        hi = float(max(both["mse"].max(), both["fleet_mse"].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="device = fleet")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("fleet model hold-out MSE")
    ax.set_ylabel("device model hold-out MSE")
    ax.set_title("Device vs fleet (blue: device model kept, orange: fallback)")
    fig.tight_layout()
    paths.append(out_dir / "device_vs_fleet.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
