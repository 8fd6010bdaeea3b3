"""What a job run as `python -m cloud_training` reports: progress as log lines, a compact plain summary.

Container runtimes and cron collect plain lines, so there is no progress bar and no table here;
`edgefleet` draws those for people at a terminal.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud_training.cli import ScoreOutcome
    from cloud_training.pipeline import TrainingOutcome
    from cloud_training.retrain import RetrainOutcome
    from cloud_training.tracking import RegisteredBundle

__all__ = ["ProgressLog", "retrain_summary", "score_summary", "training_summary"]

logger = logging.getLogger(__name__)


class ProgressLog:
    """A progress callback that logs Spark task progress once per tenth (`steps`) of the way, not on every poll."""

    def __init__(self, what: str, steps: int = 10) -> None:
        self._what = what
        self._steps = steps
        self._total = 0
        self._logged_step = -1

    def __call__(self, done: int, total: int) -> None:
        """Log `done` of `total` tasks when a new step is reached or Spark moved on to another stage."""
        if total != self._total:
            self._total, self._logged_step = total, -1
        step = done * self._steps // total
        if step > self._logged_step:
            logger.info("%s: %d of %d tasks done", self._what, done, total)
            self._logged_step = step


def _mse(value: object) -> str:
    return "-" if value is None or value != value else f"{value:.4g}"  # value != value: NaN


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count:,} {name}" for name, count in counts.items()) or "none"


def _tracking_lines(run_id: str | None, registered: RegisteredBundle | None, alias: str) -> list[str]:
    lines = [f"MLflow run {run_id}"] if run_id else []
    if registered:
        lines.append(f"registered model {registered.name} version {registered.version}{alias}")
    return lines


def training_summary(outcome: TrainingOutcome) -> str:
    """Return a training session's outcome in a few plain lines."""
    from cloud_training.report import comparison_line

    summary, timings = outcome.summary, outcome.timings_s
    reasons = ", ".join(f"{r['reason']} ({r['devices']:,})" for r in summary["reasons"]) or "none"
    lines = [
        *([outcome.execution.line] if outcome.execution else []),
        f"devices {summary['devices']:,}: {_counts(summary['counts'])}; reasons: {reasons}",
        comparison_line(summary),
        f"device model beats the chosen fleet model ({outcome.manifest.fleet.family}) on "
        f"{summary['device_beats_fleet']:,} of {summary['compared_with_fleet']:,} devices; "
        f"mean model {summary['mean_model_bytes'] / 1000:.1f} kB",
        f"{outcome.models_per_s:.1f} models/s, {timings['end_to_end_s']:.1f} s end to end "
        f"(JVM start {timings['jvm_start_s']:.1f} s)",
        f"bundle {outcome.manifest.bundle_version} written to {outcome.bundle_dir}",
    ]
    alias = " (alias champion)" if outcome.registered and outcome.registered.champion else ""
    return "\n".join(lines + _tracking_lines(outcome.run_id, outcome.registered, alias))


def retrain_summary(outcome: RetrainOutcome) -> str:
    """Return a retraining run's outcome in a few plain lines."""
    summary, timings = outcome.summary, outcome.timings_s
    lines = [
        f"devices {summary['devices']:,}, picked {summary['picked']:,}: {_counts(summary['picked_by_reason'])}",
        f"improved {summary['improved']:,} devices, kept the champion on {summary['kept_champion']:,}; "
        f"mean fresh hold-out MSE {_mse(summary['fresh_mse_champion'])} -> {_mse(summary['fresh_mse_merged'])}",
        f"{timings['end_to_end_s']:.1f} s end to end (JVM start {timings['jvm_start_s']:.1f} s)",
        f"bundle {outcome.bundle_version} written to {outcome.bundle_dir} (champion was {outcome.champion_version}; "
        f"fresh rows since {outcome.cutoff:%Y-%m-%d %H:%M} UTC)",
        f"deployment manifest {outcome.manifest_path}",
    ]
    alias = ": alias champion moved here" if outcome.alias_moved else ": alias champion not moved (no improvement)"
    return "\n".join(lines + _tracking_lines(outcome.run_id, outcome.registered, alias))


def score_summary(outcome: ScoreOutcome) -> str:
    """Return how many rows a scoring run wrote, and where."""
    return f"scored {outcome.rows:,} rows into {outcome.out}"
