"""Typed settings of the training job, validated once at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud_training.device_training import EdgeBudget, TrainingConfig
from cloud_training.families import FAMILIES
from cloud_training.tracking import TrackingMode


class TrainSettings(BaseSettings):
    """Settings of `edgefleet train`: flags override `EDGEFLEET_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid", populate_by_name=True, frozen=True)

    history: Path
    out: Path = Path("out/bundle")
    features: tuple[str, ...] | None = None
    master: str = Field("local[*]", validation_alias=AliasChoices("master", "SPARK_MASTER", "EDGEFLEET_MASTER"))
    driver_memory: str = "4g"
    tracking: TrackingMode = "scalable"
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        validation_alias=AliasChoices("tracking_uri", "MLFLOW_TRACKING_URI", "EDGEFLEET_TRACKING_URI"),
    )
    experiment: str = "edgefleet"
    registered_model: str = "edgefleet-fleet"
    families: tuple[str, ...] = tuple(FAMILIES)
    holdout_fraction: float = 0.2
    min_rows: int = 30
    max_staleness_days: float = 30.0
    fleet_margin: float = 0.05
    fleet_max_rows: int = Field(20_000, ge=100)
    fleet_rows_per_device: int = Field(50, ge=1)
    max_model_bytes: int = 100_000
    max_predict_us: float = 2_000.0
    onnx: bool = True
    plots: bool = True
    seed: int = 0

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in FAMILIES]
        if unknown or not value:
            raise ValueError(f"Unknown model families {unknown or '(none)'}; use some of: {', '.join(FAMILIES)}")
        return value

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Set --tracking-uri to e.g. sqlite:///mlflow.db, a directory, or http://host:5000")
        return value

    def training_config(self, features: tuple[str, ...], reference_ts_s: float | None = None) -> TrainingConfig:
        """Return the config that the per-device function receives."""
        return TrainingConfig(
            features=features,
            families=self.families,
            holdout_fraction=self.holdout_fraction,
            min_rows=self.min_rows,
            max_staleness_days=self.max_staleness_days,
            reference_ts_s=reference_ts_s,
            fleet_margin=self.fleet_margin,
            budget=EdgeBudget(max_model_bytes=self.max_model_bytes, max_predict_us=self.max_predict_us),
            export_onnx=self.onnx,
            fleet_rows_per_device=self.fleet_rows_per_device,
            seed=self.seed,
        )
