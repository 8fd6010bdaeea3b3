"""Read-only look-ups in the MLflow model registry: which registered version holds a bundle.

A bundle written with tracking on names its MLflow run in its manifest (`mlflow_run_id`); the
version registered from that run is the bundle's. `edgefleet bundle registered` asks this after
`edgefleet retrain` (the Airflow DAG's register step), without writing to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from cloud_training.tracking import CHAMPION_ALIAS, with_backoff
from edgefleet.errors import EdgefleetError

__all__ = ["BundleRegistration", "find_registration"]


@dataclass(frozen=True)
class BundleRegistration:
    """The registered version(s) that a run logged, and where the `champion` alias points."""

    registered_model: str
    versions: tuple[str, ...]
    champion_version: str | None

    @property
    def is_champion(self) -> bool:
        """Return True when the `champion` alias points at one of this run's versions."""
        return self.champion_version in self.versions


def find_registration(tracking_uri: str, registered_model: str, run_id: str) -> BundleRegistration:
    """Return the versions of `registered_model` registered from `run_id` (none: an empty tuple)."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db_path.is_file():  # MLflow would create an empty store and find nothing
            raise EdgefleetError(f"No MLflow store at {db_path} (--tracking-uri {tracking_uri})")
    if "'" in registered_model or "'" in run_id:
        raise EdgefleetError(f"Registered model name {registered_model!r} or run id {run_id!r} holds a quote")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = with_backoff(lambda: client.search_model_versions(f"name = '{registered_model}' and run_id = '{run_id}'"))
    versions = tuple(sorted((str(v.version) for v in found), key=int))
    champion = None
    if versions:
        aliases = with_backoff(lambda: client.get_registered_model(registered_model).aliases)
        champion = None if aliases.get(CHAMPION_ALIAS) is None else str(aliases[CHAMPION_ALIAS])
    return BundleRegistration(registered_model, versions, champion)
