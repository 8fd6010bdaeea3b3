"""What a run of the edge did, from the lake and the modules' counters: numbers and an HTML page.

Live accuracy is measured against the ground truth the simulated devices send (`label`):
for every prediction in the lake, and like for like — the readings a device model served are
also scored by the fleet model offline, so "device models vs fleet model" compares the same
readings.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from edgefleet.bundle import BundleReader, Route
from edgefleet.endpoints import TELEMETRY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

FLEET = Route("fleet", None, "no_model")


def drift_detection(alerts: list[dict[str, Any]], drifted: list[str], devices: set[str]) -> dict[str, Any]:
    """Return how the edge's drift alerts matched the devices known to have drifted."""
    alerted = {str(alert.get("device_id")) for alert in alerts}
    stable = devices - set(drifted)
    false_alarms = sorted(alerted - set(drifted))
    return {
        "alerts": len(alerts),
        "detected": len(alerted & set(drifted)),
        "drifted": len(drifted),
        "detection_rate": round(len(alerted & set(drifted)) / len(drifted), 3) if drifted else None,
        "false_alarms": len(false_alarms),
        "false_alarm_rate": round(len(false_alarms) / len(stable), 4) if stable else None,
        "false_alarm_devices": false_alarms[:20],
    }


def _errors(frame: pd.DataFrame, predicted: str) -> dict[str, float | int]:
    error = frame[predicted].to_numpy(dtype=float) - frame["label"].to_numpy(dtype=float)
    if not len(error):
        return {"n": 0, "mse": float("nan"), "mae": float("nan")}
    return {"n": len(error), "mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error)))}


def predictions_with_truth(lake: pd.DataFrame) -> pd.DataFrame:
    """Return the inference rows that carry a ground-truth label, one per (device_id, seq)."""
    rows = lake[(lake["source_module"] == "inference") & lake["label"].notna()]
    return rows.drop_duplicates(["device_id", "seq"]).reset_index(drop=True)


def live_accuracy(
    lake: pd.DataFrame, bundle_dir: Path, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """Return live error by model, and device models vs the fleet model on the same readings."""
    rows = predictions_with_truth(lake)
    if since is not None:
        rows = rows[rows["ts"] >= pd.Timestamp(since)]
    if until is not None:
        rows = rows[rows["ts"] < pd.Timestamp(until)]
    by_model = {str(kind): _errors(group, "prediction_value") for kind, group in rows.groupby("prediction_model")}
    device_rows = rows[rows["prediction_model"] == "device"].copy()
    like_for_like: dict[str, Any] = {}
    if len(device_rows):
        reader = BundleReader(Path(bundle_dir))
        x = device_rows[list(reader.features)].to_numpy(dtype=float)
        device_rows["fleet_value"] = reader.model(FLEET).predict(x)
        like_for_like = {
            "device_model": _errors(device_rows, "prediction_value"),
            "fleet_model": _errors(device_rows, "fleet_value"),
        }
    return {"by_model": by_model, "device_vs_fleet": like_for_like, "n": len(rows)}


def account(lake: pd.DataFrame, deadletters: list[dict[str, Any]], sent: Mapping[str, int] | None) -> dict[str, Any]:
    """Return where the sent readings went: predicted, dead-lettered, or lost."""
    predicted = lake[lake["source_module"] == "inference"]
    unique = predicted.drop_duplicates(["device_id", "seq"])
    reasons = Counter(str(record.get("reason")) for record in deadletters)
    out: dict[str, Any] = {
        "predicted": len(unique),
        "predicted_duplicates": len(predicted) - len(unique),
        "deadletters": sum(reasons.values()),
        "deadletters_by_reason": dict(reasons.most_common()),
    }
    if sent:
        expected = int(sent.get("expected_valid", sent.get("sent", 0)))
        out["sent"] = int(sent.get("sent", 0))
        out["expected_valid"] = expected
        out["lost"] = max(0, expected - len(unique))
    return out


def latency(lake: pd.DataFrame) -> dict[str, float | None]:
    """Return p50/p99 of the edge latency (sensor receipt → prediction) in the lake's predictions."""
    values = lake.loc[lake["source_module"] == "inference", "edge_latency_ms"].dropna().to_numpy(dtype=float)
    if not len(values):
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


def units_per_1000_predictions(inference_stats: Mapping[str, Any]) -> float | None:
    """Return upstream 4 KB units per 1,000 predictions from the inference module's counters."""
    predictions = int(inference_stats.get("predictions", 0) or 0)
    units = int(((inference_stats.get("outbox") or {}).get("units_4kb") or {}).get("predictions", 0))
    return round(units * 1000 / predictions, 1) if predictions else None


def upstream_cost(
    sensor_stats: Mapping[str, Any], inference_stats: Mapping[str, Any], readings: int | None
) -> dict[str, float | None]:
    """Return 4 KB units and bytes per reading for everything the modules sent upstream.

    Under the default routes every module output goes to `$upstream` except the sensor's
    `telemetry`, which goes to inference (its raw copy upstream is `--raw-telemetry`, off).
    """

    def outbox(stats: Mapping[str, Any], counter: str) -> Mapping[str, int]:
        return (stats.get("outbox") or {}).get(counter) or {}

    if not readings:
        return {"units_4kb_per_1000_readings": None, "bytes_per_reading": None}
    units = sum(outbox(inference_stats, "units_4kb").values())
    units += sum(n for output, n in outbox(sensor_stats, "units_4kb").items() if output != TELEMETRY)
    sent = sum(outbox(inference_stats, "bytes").values())
    sent += sum(n for output, n in outbox(sensor_stats, "bytes").items() if output != TELEMETRY)
    return {
        "units_4kb_per_1000_readings": round(units * 1000 / readings, 1),
        "bytes_per_reading": round(sent / readings, 1),
    }


def cpu_per_1000_readings(cpu_s: Mapping[str, float], readings: int | None) -> dict[str, float | None]:
    """Return CPU milliseconds per 1,000 readings of each edge role, and their total."""
    if not readings:
        return {role: None for role in (*cpu_s, "total")}
    per_1000 = {role: round(used * 1e6 / readings, 1) for role, used in cpu_s.items()}
    return {**per_1000, "total": round(sum(used * 1e6 / readings for used in cpu_s.values()), 1)}


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(lake: pd.DataFrame, markers: Mapping[str, datetime] | None = None) -> dict[str, str]:
    """Return base64 PNGs: error over time by model, prediction vs truth, latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = predictions_with_truth(lake)
    images: dict[str, str] = {}
    if not len(rows):
        return images
    rows = rows.sort_values("ts")
    rows["abs_error"] = (rows["prediction_value"] - rows["label"]).abs()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for kind, group in rows.groupby("prediction_model"):
        series = group.set_index("ts")["abs_error"].rolling("30s").mean()
        ax.plot(series.index, series.to_numpy(), label=f"{kind} model", linewidth=1)
    for name, when in (markers or {}).items():
        ax.axvline(pd.Timestamp(when), color="grey", linestyle="--", linewidth=1)  # type: ignore[arg-type]
        ax.annotate(name, (pd.Timestamp(when), ax.get_ylim()[1]), fontsize=8, va="top")
    ax.set_ylabel("|prediction − truth| (30 s mean)")
    ax.legend(loc="upper left", fontsize=8)
    images["error_over_time"] = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    sample = rows.sample(min(len(rows), 3000), random_state=0)
    ax.scatter(sample["label"], sample["prediction_value"], s=3, alpha=0.4)
    low, high = float(sample["label"].min()), float(sample["label"].max())
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel("truth (label)")
    ax.set_ylabel("prediction")
    images["prediction_vs_truth"] = _png(fig)
    plt.close(fig)
    values = rows["edge_latency_ms"].dropna().to_numpy(dtype=float)
    if len(values):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(values, bins=50)
        ax.set_xlabel("edge latency, sensor receipt → prediction (ms)")
        images["latency"] = _png(fig)
        plt.close(fig)
    return images


def write_html(path: Path, title: str, sections: Mapping[str, object], images: Mapping[str, str]) -> Path:
    """Write a self-contained HTML report: the summary as tables, plots inline."""
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "td,th{padding:2px 10px;text-align:left}th{background:#eee}pre{background:#f7f7f7;padding:1em}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for name, content in sections.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(_html_value(content))
    for name, png in images.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2><img src='data:image/png;base64,{png}'>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _html_value(value: object) -> str:
    if isinstance(value, Mapping):
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{_html_value(item)}</td></tr>" for key, item in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))
