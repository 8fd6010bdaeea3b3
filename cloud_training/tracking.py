"""MLflow wiring: one parent run per training session, the bundle as a registered pyfunc model.

`scalable` (default) logs aggregates, the per-device table, plots and the bundle: a
constant number of MLflow calls whatever the fleet size. `nested` also opens one child
run per device with its model (the common recipe), retrying transient server errors.
"""

from __future__ import annotations

import io
import logging
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, TypeVar

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from cloud_training.cluster import check_tracking_server
from cloud_training.device_training import BLOB_COLUMNS
from cloud_training.gateway import BUNDLE_ARTIFACT, BundleGateway, pack_bundle

logger = logging.getLogger(__name__)

TrackingMode = Literal["scalable", "nested", "off"]
CHAMPION_ALIAS = "champion"
PYFUNC_NAME = "fleet_bundle"
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
_T = TypeVar("_T")
_GATEWAY_REQUIREMENTS = ("scikit-learn", "joblib", "numpy", "pandas", "pydantic", "onnxruntime", "mlflow")
_PACKAGE_DIRS = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "edgefleet")


def is_transient(err: BaseException) -> bool:
    """Return True for errors worth retrying: HTTP 429/5xx from a server, or a locked sqlite store."""
    if "database is locked" in str(err).lower():
        return True
    if isinstance(err, RestException):
        status: object = err.get_http_status_code()
    else:
        status = getattr(getattr(err, "response", None), "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def with_backoff(
    call: Callable[[], _T],
    *,
    attempts: int = 6,
    base_s: float = 0.25,
    max_s: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> _T:
    """Run `call`, retrying transient errors with exponential backoff and full jitter."""
    rng = rng or random.Random()
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt == attempts - 1 or not is_transient(err):
                raise
            delay = rng.uniform(0.0, min(max_s, base_s * 2**attempt))
            logger.warning("MLflow call failed (%s); retry %d/%d in %.2fs", err, attempt + 1, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def artifact_location_for(tracking_uri: str) -> str | None:
    """Keep a sqlite store's artifacts beside its database file, not in the current directory."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts").as_uri()


def pinned_requirements() -> list[str]:
    """Return the gateway's pip requirements, pinned, so MLflow does not spawn a process to infer them."""
    return [f"{name}=={version(name)}" for name in _GATEWAY_REQUIREMENTS]


@dataclass(frozen=True)
class RegisteredBundle:
    """Where the bundle landed in the registry."""

    model_uri: str
    name: str
    version: str
    champion: bool


# Final-slice errors of the served kind (mse/mae/r2) and of each kind it was chosen from.
DEVICE_RUN_METRICS = ("mse", "mae", "r2", "fleet_mse", "device_mse", "corrected_mse")


class Tracker:
    """Log one training session to MLflow."""

    def __init__(self, tracking_uri: str, experiment: str, mode: TrackingMode) -> None:
        self.mode = mode
        self.tracking_uri = tracking_uri
        check_tracking_server(tracking_uri)  # a server that is down fails in seconds, before any work
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if with_backoff(lambda: self.client.get_experiment_by_name(experiment)) is None:
            location = artifact_location_for(tracking_uri)
            with_backoff(lambda: self.client.create_experiment(experiment, artifact_location=location))
        with_backoff(lambda: mlflow.set_experiment(experiment))
        self.run_id: str | None = None

    def start(self, params: dict[str, Any], run_name: str = "edgefleet-train") -> str:
        """Open the parent run and log the session's parameters."""
        run = with_backoff(lambda: mlflow.start_run(run_name=run_name))
        self.run_id = run.info.run_id
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        return self.run_id

    def log_device_runs(self, results: pd.DataFrame, features: tuple[str, ...]) -> dict[str, str]:
        """Open one nested child run per device (with its model, when it has one)."""
        import joblib
        import mlflow.sklearn

        run_ids: dict[str, str] = {}
        requirements = pinned_requirements()
        for row in results.itertuples(index=False):

            def log_one(row: Any = row) -> str:
                with mlflow.start_run(run_name=str(row.device_id), nested=True) as child:
                    mlflow.log_params(
                        {"device_id": row.device_id, "status": row.status, "family": row.family, "kind": row.kind}
                    )
                    if row.reason is not None:
                        mlflow.set_tag("reason", row.reason)
                    metrics = {k: getattr(row, k) for k in DEVICE_RUN_METRICS if pd.notna(getattr(row, k))}
                    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                    if row.joblib_blob is not None:
                        model = joblib.load(io.BytesIO(row.joblib_blob))
                        mlflow.sklearn.log_model(
                            model,
                            name="model",
                            pip_requirements=requirements,
                            skops_trusted_types=SKOPS_TRUSTED_TYPES,  # our own trees, built in this session
                        )
                    return str(child.info.run_id)

            run_ids[str(row.device_id)] = with_backoff(log_one)
        return run_ids

    def finish(
        self,
        metrics: dict[str, float],
        results: pd.DataFrame,
        artifacts: list[Path] | Callable[[], list[Path]],
        bundle_dir: Path,
        features: tuple[str, ...],
        registered_model: str | None,
        claim_champion: bool = True,
    ) -> RegisteredBundle | None:
        """Log aggregates, tables, the bundle and plots; register it (the first version claims `champion` if asked).

        `artifacts` may be a function that waits for plots still being drawn: it is called last.
        """
        mlflow.log_metrics(metrics)
        table = results.drop(columns=list(BLOB_COLUMNS), errors="ignore")
        with io.BytesIO() as buffer:
            table.to_parquet(buffer, index=False)
            path = bundle_dir.parent / f".{bundle_dir.name}-device_results.parquet"
            path.write_bytes(buffer.getvalue())
        try:
            mlflow.log_artifact(str(path), artifact_path="results")
        finally:
            path.unlink(missing_ok=True)
        # One archive, not one artifact per model file: 10,000 devices are 20,000 files,
        # which MLflow would copy one by one, twice (run artifact and pyfunc model).
        with tempfile.TemporaryDirectory(dir=bundle_dir.parent, prefix=f".{bundle_dir.name}-archive-") as scratch:
            archive = pack_bundle(bundle_dir, Path(scratch))
            mlflow.log_artifact(str(archive), artifact_path=BUNDLE_ARTIFACT)
            registered = self._log_pyfunc(archive, features, registered_model, claim_champion)
        for artifact in artifacts() if callable(artifacts) else artifacts:
            mlflow.log_artifact(str(artifact), artifact_path="plots")
        mlflow.end_run()
        return registered

    def abort(self) -> None:
        """Close the parent run as failed; a tracking server that is gone cannot hide the first error."""
        if mlflow.active_run() is None:
            return
        try:
            mlflow.end_run(status="FAILED")  # forgets the run locally before it calls the server
        except Exception as err:
            logger.warning("cannot mark MLflow run %s FAILED: %s", self.run_id, err)

    def set_champion(self, registered_model: str, model_version: str) -> None:
        """Point the `champion` alias at a registered version."""
        with_backoff(lambda: self.client.set_registered_model_alias(registered_model, CHAMPION_ALIAS, model_version))

    def champion_version(self, registered_model: str) -> str | None:
        """Return the version the `champion` alias points at, or None when it is not set."""
        try:
            aliases = with_backoff(lambda: self.client.get_registered_model(registered_model).aliases)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = aliases.get(CHAMPION_ALIAS)
        return None if version is None else str(version)

    def _log_pyfunc(
        self, archive: Path, features: tuple[str, ...], registered_model: str | None, claim_champion: bool = True
    ) -> RegisteredBundle | None:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "device_id"), *(ColSpec("double", f) for f in features)]),
            outputs=Schema([ColSpec("double")]),
        )
        with warnings.catch_warnings():
            # We pass an explicit signature; MLflow's type-hint and input-example hints do not apply.
            warnings.simplefilter("ignore", UserWarning)
            info = self._log_gateway(archive, signature)
        if not registered_model:
            return None
        model_version = with_backoff(lambda: mlflow.register_model(info.model_uri, registered_model))
        aliases = self.client.get_registered_model(registered_model).aliases
        champion = claim_champion and CHAMPION_ALIAS not in aliases
        if champion:  # first registration; the retraining gate moves it later
            self.client.set_registered_model_alias(registered_model, CHAMPION_ALIAS, model_version.version)
        return RegisteredBundle(info.model_uri, registered_model, str(model_version.version), champion)

    def _log_gateway(self, archive: Path, signature: Any) -> Any:
        return mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=BundleGateway(),
            artifacts={BUNDLE_ARTIFACT: str(archive)},
            code_paths=[str(p) for p in _PACKAGE_DIRS],
            pip_requirements=pinned_requirements(),
            signature=signature,
        )
