"""What a training session produced, as numbers (summary) and pictures (plots)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cloud_training.strategy import check_strategy

STATUSES = ("trained", "fallback", "skipped", "failed")
KINDS = ("device", "fleet", "fleet_corrected")
COMPARED = {
    "deployed_mse": "mse",
    "fleet_mse": "fleet_mse",
    "device_mse": "device_mse",
    "corrected_mse": "corrected_mse",
}


def final_slice_comparison(results: pd.DataFrame) -> dict[str, Any]:
    """Return the row-weighted final-slice MSE of the deployed choice, fleet only, device only and fleet + correction.

    All four on the same rows: the final hold-outs of the devices where each of them was scored
    (a kind missing on every device, e.g. no fleet model, is None).
    """
    columns = [c for c in COMPARED.values() if c in results and results[c].notna().any()]
    scored = results[(results["n_holdout"] > 0) & results["mse"].notna()]
    scored = scored[scored[columns].notna().all(axis=1)] if columns else scored.iloc[0:0]
    rows = scored["n_holdout"].to_numpy(dtype=float)
    comparison: dict[str, Any] = {"rows": int(rows.sum()), "devices": len(scored)}
    for name, column in COMPARED.items():
        if column in columns and rows.sum() > 0:
            comparison[name] = float((scored[column].to_numpy(dtype=float) * rows).sum() / rows.sum())
        else:
            comparison[name] = None
    return comparison


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
    for column in ("mse", "mae", "r2", "fleet_mse", "device_mse", "corrected_mse"):
        values = modelled[column].dropna().to_numpy(dtype=float)
        if values.size:
            quantiles[column] = {f"p{q}": float(np.percentile(values, q)) for q in (10, 50, 90)}
    # Each device's own best model against the chosen fleet model, on the same final rows.
    both = modelled[modelled["fleet_mse"].notna() & modelled["device_mse"].notna()]
    families = modelled["family"].value_counts().to_dict()
    served = modelled[modelled["status"].isin(["trained", "fallback"])]
    kinds = {kind: int((served["kind"].where(served["status"] == "trained", "fleet") == kind).sum()) for kind in KINDS}
    sizes = modelled["model_bytes"].dropna().to_numpy(dtype=float)
    return {
        "devices": len(results),
        "counts": counts,
        "reasons": [
            {"status": str(status), "reason": str(reason), "devices": int(devices)}
            for status, reason, devices in reasons.itertuples(index=False)
        ],
        "quantiles": quantiles,
        "device_beats_fleet": int((both["device_mse"] < both["fleet_mse"]).sum()),
        "compared_with_fleet": len(both),
        "kinds": kinds,
        "comparison": final_slice_comparison(results),
        "strategy": check_strategy(results).to_dict(),
        "families": {str(k): int(v) for k, v in families.items()},
        "mean_model_bytes": float(sizes.mean()) if sizes.size else 0.0,
    }


def comparison_line(summary: dict[str, Any]) -> str:
    """Return the final-slice comparison as one line: deployed vs fleet only, device only, fleet + correction."""
    comparison = summary["comparison"]

    def mse(name: str) -> str:
        value = comparison[name]
        return "n/a" if value is None else f"{value:.4g}"

    kinds = ", ".join(f"{kind} {n:,}" for kind, n in summary["kinds"].items())
    return (
        f"final hold-out MSE over {comparison['rows']:,} rows: deployed {mse('deployed_mse')}, "
        f"fleet only {mse('fleet_mse')}, device only {mse('device_mse')}, fleet + correction {mse('corrected_mse')}; "
        f"served: {kinds}{strategy_note(summary)}"
    )


def strategy_note(summary: dict[str, Any]) -> str:
    """Return what the fleet-wide check decided, when it chose one kind for every device."""
    check = summary["strategy"]
    if check["strategy"] == "per_device":
        return ""
    what = {"fleet": "the fleet model", "fleet_corrected": "fleet + offsets", "device": "own models"}[check["strategy"]]
    return (
        f" (the fleet-wide check chose {what} for all: on {check['rows']:,} check rows mse fleet "
        f"{check['fleet_mse']:.4g}, fleet + offsets {check['corrected_mse']:.4g}, per-device "
        f"{check['per_device_mse']:.4g}, own models {check['device_mse']:.4g})"
    )


PLOT_COLUMNS = ("status", "kind", "family", "mse", "fleet_mse", "device_mse")


def start_plots(results: pd.DataFrame, out_dir: Path) -> Callable[[], list[Path]]:
    """Start drawing the plots in a forked process; return a function that waits for their paths.

    Importing matplotlib and drawing two figures takes ~1 s of one core, while writing the bundle
    and logging it to MLflow leaves the other core idle: this is that second core's work.
    """
    slim = results[list(PLOT_COLUMNS)].copy()
    if "fork" not in multiprocessing.get_all_start_methods():  # spawn would re-import pandas first
        paths = write_plots(slim, out_dir)
        return lambda: paths
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(write_plots, slim, out_dir)
    pool.shutdown(wait=False)  # the pending drawing still runs; the process exits after it
    return future.result


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
    both = modelled[modelled["fleet_mse"].notna() & modelled["device_mse"].notna()]
    if not both.empty:
        served = both["kind"].where(both["status"] == "trained", "fleet")
        colors = served.map({"device": "tab:blue", "fleet": "tab:orange", "fleet_corrected": "tab:green"}).fillna(
            "grey"
        )
        ax.scatter(both["fleet_mse"], both["device_mse"], s=8, c=colors.tolist(), alpha=0.7)
        lo = float(min(both["device_mse"].min(), both["fleet_mse"].min()))
        hi = float(max(both["device_mse"].max(), both["fleet_mse"].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="device = fleet")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("fleet model final hold-out MSE")
    ax.set_ylabel("device model final hold-out MSE")
    ax.set_title("Device vs fleet (served: blue device, orange fleet, green fleet + correction)", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "device_vs_fleet.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
