"""Typed settings of the training and retraining jobs, validated once at start.

Flags override `EDGEFLEET_*` environment variables; `SPARK_MASTER` and `MLFLOW_TRACKING_URI`
are read under their usual names too. The knobs both jobs share are declared once, in
`JobSettings` and the models it extends (`cloud_training.knobs`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud_training.device_training import TrainingConfig
from cloud_training.execution import Execution
from cloud_training.knobs import EdgeBudget, ModelKnobs
from cloud_training.retrain_policy import RetrainPolicy, RetrainThresholds
from cloud_training.tracking import TrackingMode
from edgefleet.bundle import BundleManifest
from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet.errors import EdgefleetError

__all__ = ["JobSettings", "RetrainSettings", "TrainSettings", "parse_since"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, "w": 604_800.0}


class JobSettings(BaseSettings, ModelKnobs, EdgeBudget):
    """The knobs `edgefleet train` and `edgefleet retrain` share: Spark, MLflow, and how models are chosen."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid", populate_by_name=True, frozen=True)

    master: str = Field("local[*]", validation_alias=AliasChoices("master", "SPARK_MASTER", "EDGEFLEET_MASTER"))
    driver_memory: str = "4g"
    tracking: TrackingMode = "scalable"
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        validation_alias=AliasChoices("tracking_uri", "MLFLOW_TRACKING_URI", "EDGEFLEET_TRACKING_URI"),
    )
    experiment: str = "edgefleet"
    registered_model: str = "edgefleet-fleet"

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Set --tracking-uri to e.g. sqlite:///mlflow.db, a directory, or http://host:5000")
        return value

    @property
    def budget(self) -> EdgeBudget:
        """Return what one device model may cost on the edge."""
        return EdgeBudget(max_model_bytes=self.max_model_bytes, max_predict_us=self.max_predict_us)

    def device_config(self, features: tuple[str, ...], **job_knobs: float | None) -> TrainingConfig:
        """Return the config `train_device` receives: these knobs, the features, and what the job adds."""
        shared = self.model_dump(include=set(ModelKnobs.model_fields))
        return TrainingConfig(features=features, budget=self.budget, **shared, **job_knobs)


class TrainSettings(JobSettings):
    """Settings of `edgefleet train`."""

    history: Path
    out: Path = Path("out/bundle")
    features: tuple[str, ...] | None = None
    max_staleness_days: float = 30.0
    fleet_max_rows: int = Field(20_000, ge=100)
    fleet_rows_per_device: int = Field(50, ge=1)
    plots: bool = True
    # auto: in this process on a local master while the history fits in memory, else Spark (execution.py).
    execution: Execution = "auto"

    def training_config(self, features: tuple[str, ...], reference_ts_s: float | None = None) -> TrainingConfig:
        """Return the config that the per-device function receives."""
        return self.device_config(
            features,
            max_staleness_days=self.max_staleness_days,
            reference_ts_s=reference_ts_s,
            fleet_rows_per_device=self.fleet_rows_per_device,
        )


def parse_since(text: str, now: datetime) -> datetime:
    """Return the UTC cutoff that an ISO time or a duration before `now` (`90m`, `24h`, `7d`) names."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    try:
        cutoff = datetime.fromisoformat(text.strip())
    except ValueError:
        raise EdgefleetError(
            f"--since {text!r}: write an ISO time (2026-11-20T06:00:00Z) or a duration before now (90m, 24h, 7d)"
        ) from None
    return cutoff.replace(tzinfo=UTC) if cutoff.tzinfo is None else cutoff.astimezone(UTC)


class RetrainSettings(JobSettings, RetrainThresholds):
    """Settings of `edgefleet retrain`."""

    model_config = JobSettings.model_config

    lake: Path
    bundle: Path
    out: Path = Path("out/bundle-next")
    out_manifest: Path | None = Field(None, description="default: <out>.deployment.json beside the bundle")
    since: str | None = Field(None, description="ISO time or duration before now; default the bundle's created_at")
    prior_history: Path | None = Field(None, description="history to train challengers on besides the fresh rows")
    template: Path = DEFAULT_TEMPLATE
    image_registry: str = ""
    manifest_variables: dict[str, str] = Field(default_factory=dict)
    # Per-device child runs belong to a full training; a retraining run logs one run.
    tracking: Literal["scalable", "off"] = "scalable"

    @field_validator("since")
    @classmethod
    def _since_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_since(value, datetime.now(UTC))
            except EdgefleetError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _separate_outputs(self) -> RetrainSettings:
        out = self.out.resolve()
        if out == self.bundle.resolve():
            raise ValueError("--out is the champion --bundle; write the merged bundle to a new directory")
        if out in self.manifest_path.resolve().parents:
            # The inference module refuses a bundle holding files its manifest does not pin.
            raise ValueError("--out-manifest is inside the bundle directory; write it beside the bundle")
        return self

    @property
    def manifest_path(self) -> Path:
        """Return where the deployment manifest goes."""
        return self.out_manifest or self.out.with_name(f"{self.out.name}.deployment.json")

    def policy(self, champion: BundleManifest) -> RetrainPolicy:
        """Return what the per-device function needs besides the data and the champion's models."""
        return RetrainPolicy(
            # The champion's fleet model is kept: no rows to pool.
            training=self.device_config(champion.features, fleet_rows_per_device=0),
            bundle_version=champion.bundle_version,
            use_history=self.prior_history is not None,
            **self.model_dump(include=set(RetrainThresholds.model_fields)),
        )
