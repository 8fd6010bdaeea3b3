"""Terminal output of the CLI: progress bar, summary tables (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from cloud_training.pipeline import TrainingOutcome

console = Console()
err_console = Console(stderr=True)


@contextmanager
def training_progress(enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a callback that draws Spark task progress with an ETA (on stderr)."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("training devices"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = progress.add_task("train", total=None)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield on_progress


def render_training(outcome: TrainingOutcome) -> None:
    """Print the closing summary of a training session."""
    summary = outcome.summary
    table = Table(title=f"Training summary: {summary['devices']:,} devices")
    table.add_column("status")
    table.add_column("devices", justify="right")
    table.add_column("reason")
    for status, count in summary["counts"].items():
        reasons = ", ".join(f"{r['reason']} ({r['devices']})" for r in summary["reasons"] if r["status"] == status)
        table.add_row(status, f"{count:,}", reasons)
    console.print(table)

    quantiles = Table(title="Hold-out error (devices with a model)")
    quantiles.add_column("metric")
    for q in ("p10", "p50", "p90"):
        quantiles.add_column(q, justify="right")
    for metric, values in summary["quantiles"].items():
        quantiles.add_row(metric, *(f"{values[q]:.4g}" for q in ("p10", "p50", "p90")))
    console.print(quantiles)

    timings = outcome.timings_s
    from cloud_training.report import comparison_line

    console.print(comparison_line(summary))
    console.print(
        f"device model beats the chosen fleet model ({outcome.manifest.fleet.family}) on "
        f"{summary['device_beats_fleet']:,} of {summary['compared_with_fleet']:,} devices; "
        f"families {summary['families']}; mean model {summary['mean_model_bytes'] / 1000:.1f} kB"
    )
    console.print(
        f"{outcome.models_per_s:.1f} models/s end to end ({timings['end_to_end_s']:.1f} s; "
        f"JVM start {timings['jvm_start_s']:.1f} s, fleet {timings.get('fleet_s', 0.0):.1f} s, "
        f"train {timings['train_s']:.1f} s, "
        f"export {timings['export_s']:.1f} s, tracking {timings['tracking_s']:.1f} s)"
    )
    console.print(f"bundle {outcome.manifest.bundle_version} written to {outcome.bundle_dir}")
    if outcome.run_id:
        console.print(f"MLflow run {outcome.run_id}")
    if outcome.registered:
        reg = outcome.registered
        alias = " (alias champion)" if reg.champion else ""
        console.print(f"registered model {reg.name} version {reg.version}{alias}")
    for plot in outcome.plots:
        console.print(f"plot {plot}")


def render_inspect(info: dict[str, Any]) -> None:
    """Print a bundle summary."""
    table = Table(title=f"Bundle {info['bundle_version']}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key in ("created_at", "devices", "fleet_family", "target", "mlflow_run_id"):
        table.add_row(key, str(info[key]))
    table.add_row("features", ", ".join(info["features"]))
    table.add_row("status", ", ".join(f"{k} {v}" for k, v in info["status_counts"].items()))
    table.add_row("reasons", ", ".join(f"{k} {v}" for k, v in info["reason_counts"].items()) or "-")
    table.add_row("mean device model", f"{info['mean_device_model_bytes'] / 1000:.1f} kB")
    table.add_row("total size", f"{info['total_bytes'] / 1e6:.2f} MB")
    table.add_row("libraries", ", ".join(f"{k} {v}" for k, v in info["libraries"].items()))
    console.print(table)
