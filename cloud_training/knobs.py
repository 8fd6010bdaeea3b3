"""How each device's model is chosen: the knobs `train`, `retrain` and the per-device function share.

Each knob is declared once, here. `TrainingConfig` (what `train_device` receives) extends
`ModelKnobs`; the settings of both jobs (`cloud_training.settings`) extend `ModelKnobs` and
`EdgeBudget`, flat, so each knob keeps one `EDGEFLEET_*` variable and one flag.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud_training.families import FAMILIES

__all__ = ["EdgeBudget", "ModelKnobs"]


class EdgeBudget(BaseModel):
    """What one device model may cost on the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_model_bytes: int = Field(100_000, gt=0, description="largest model file (joblib and ONNX)")
    max_predict_us: float = Field(2_000.0, gt=0, description="slowest single-row predict on the edge runtime")


class ModelKnobs(BaseModel):
    """Which candidate families a device tries, how its data is split, and when its model is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    families: tuple[str, ...] = tuple(FAMILIES)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    min_rows: int = Field(30, ge=4)
    fleet_margin: float = Field(0.05, ge=0.0, lt=1.0, description="share by which a device model must beat the fleet")
    correction_prior_rows: float | None = Field(
        None,
        ge=0.0,
        description="rows after which a device's correction to the fleet model is half its own fit "
        "(default: estimated across the fleet, empirical Bayes)",
    )
    onnx: bool = Field(True, description="also export each model as ONNX")
    seed: int = 0

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in FAMILIES]
        if unknown or not value:
            raise ValueError(f"Unknown model families {unknown or '(none)'}; use some of: {', '.join(FAMILIES)}")
        return value
