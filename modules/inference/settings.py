"""Typed settings of the inference module, validated once at start (its desired properties: edgefleet.desired)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, field_validator

from edgefleet.environment import EnvCheck
from modules.inference.predictor import PredictorMode
from modules.runtime import ModuleSettings


def _env(name: str) -> Any:
    return AliasChoices(name.lower(), name)


class InferenceSettings(ModuleSettings):
    """Environment of the inference module (the deployment manifest's `env`)."""

    # The inference module reads no INFERENCE_* variable: one set is a mistake.
    env_check: ClassVar[EnvCheck] = EnvCheck(
        prefixes=("INFERENCE_",),
        retired=(
            (
                "PREDICTIONS_MAX_BYTES",
                "set the twin's desired property upstreamMaxBytes instead (4096-262144, default 131072)",
            ),
        ),
    )

    bundle_dir: Path = Field(validation_alias=_env("BUNDLE_DIR"))
    # Estimated memory of loaded models (an ONNX session holds ~8x its file); ~1,000 forests at 256.
    model_cache_mb: int = Field(256, ge=1, validation_alias=_env("MODEL_CACHE_MB"))
    # Where messages taken from edgeHub but not yet answered are kept across a restart.
    state_dir: Path = Field(Path("/tmp/edgefleet-inference"), validation_alias=_env("STATE_DIR"))
    max_message_bytes: int = Field(256 * 1024, ge=1024, validation_alias=_env("MAX_MESSAGE_BYTES"))
    # The upstream batches' window and size cap are twin desired properties (edgefleet.desired.InferenceDesired).
    # "bundle" in production; the other two exist to measure against (benchmarks/edge_throughput.py).
    predictor: PredictorMode = Field("bundle", validation_alias=_env("PREDICTOR"))
    # Input messages taken per processing round (each a sensor batch of ~15-20 readings).
    max_messages_per_round: int = Field(100, ge=1, validation_alias=_env("MAX_MESSAGES_PER_ROUND"))
    # A device model that fails this many readings in a row is not tried again until a bundle reload.
    quarantine_after_failures: int = Field(3, ge=1, validation_alias=_env("QUARANTINE_AFTER_FAILURES"))

    @field_validator("bundle_dir")
    @classmethod
    def _bundle_exists(cls, value: Path) -> Path:
        if not (value / "manifest.json").is_file():
            raise ValueError(
                f"BUNDLE_DIR {str(value)!r} holds no manifest.json; point it at a bundle from `edgefleet train`"
            )
        return value
