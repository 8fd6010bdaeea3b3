"""The model bundle contract: manifest, verification, and a lazy, verifying model reader.

A bundle is a directory: `manifest.json`, `fleet.joblib` (+ `fleet.onnx`) and
`models/<device>.joblib` (+ `.onnx`). Every file is listed in the manifest with its
sha256; readers check the hash of each file before they unpickle it. Only load
bundles you built: joblib files are pickles.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.errors import BundleError
from edgefleet.messages import ModelKind

logger = logging.getLogger(__name__)

BUNDLE_SCHEMA = "edgefleet.bundle/1"
MANIFEST_NAME = "manifest.json"
MODELS_DIR = "models"
DeviceStatus = Literal["trained", "fallback", "skipped", "failed"]
Runtime = Literal["auto", "onnx", "joblib"]
# Memory a loaded model holds, per byte of its file (measured: an onnxruntime session of a
# 37 KB forest holds ~260 KB), plus a fixed cost per session. The LRU budget counts this
# estimate, so MODEL_CACHE_MB bounds memory rather than file bytes.
ONNX_BYTES_PER_FILE_BYTE = 8
ONNX_SESSION_BYTES = 32 << 10
JOBLIB_BYTES_PER_FILE_BYTE = 3
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
_FLEET_KEY = "\x00fleet"  # the fleet model's key in the reader's cache (no device id can be it)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ModelFile(_Frozen):
    """One file of the bundle, as the manifest pins it."""

    path: str
    sha256: str
    size_bytes: int


class HoldoutMetrics(_Frozen):
    """Error of a model on a device's time-ordered hold-out."""

    mse: float
    mae: float
    r2: float
    n: int


class FeatureStats(_Frozen):
    """Reference statistics of one feature over the fleet's training data."""

    mean: float
    std: float
    p01: float
    p99: float


class FleetEntry(_Frozen):
    """The fleet model: fallback for unknown devices and devices whose own model is poor."""

    family: str
    joblib: ModelFile
    onnx: ModelFile | None = None
    n_train: int
    holdout: HoldoutMetrics | None = None


class Correction(_Frozen):
    """A device's own correction to the fleet model: prediction = fleet(x) + intercept + coef . x.

    Fitted on the device's residuals against the fleet model and shrunk toward zero by how
    little data the device has, so a device with few rows stays close to the fleet model.
    `coef` is in the manifest's feature order (all zeros for an offset-only correction).
    """

    intercept: float
    coef: tuple[float, ...]

    @field_validator("intercept")
    @classmethod
    def _finite_intercept(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"the correction's intercept must be a finite number, got {value}")
        return value

    @field_validator("coef")
    @classmethod
    def _finite_coef(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [str(number) for number in value if not math.isfinite(number)]
        if bad:
            raise ValueError(f"the correction's coefficients must be finite numbers, got {', '.join(bad)}")
        return value


class DeviceEntry(_Frozen):
    """One device's outcome: its model files, or why it has none.

    `kind` says what the edge serves: the device's own model (`device`, needs `joblib`),
    the fleet model (`fleet`), or the fleet model plus `correction` (`fleet_corrected`).
    Bundles written before `kind` existed leave it None: `trained` then means `device`.
    """

    status: DeviceStatus
    kind: ModelKind | None = None
    correction: Correction | None = None
    reason: str | None = None
    detail: str | None = None
    family: str | None = None
    joblib: ModelFile | None = None
    onnx: ModelFile | None = None
    n_train: int = 0
    n_holdout: int = 0
    holdout: HoldoutMetrics | None = None
    fleet_holdout: HoldoutMetrics | None = None
    predict_us: float | None = None
    mlflow_run_id: str | None = None
    # Per feature, the training distribution as text (`modules.inference.drift.FeatureReference.to_text`:
    # "edges[ | shares]"), parsed on the device's first reading: as strings, 10,000 devices cost
    # 7 MB and under 10 ms at start instead of 67 MB and 0.4 s as nested lists. Absent when the
    # device's training data spans under a day (too little to describe its daily cycle).
    feature_reference: dict[str, str] | None = None

    @model_validator(mode="after")
    def _kind_has_what_it_serves(self) -> DeviceEntry:
        if self.kind == "fleet_corrected" and self.correction is None:
            raise ValueError("kind 'fleet_corrected' needs a correction (intercept and coef)")
        if self.kind == "device" and self.joblib is None:
            raise ValueError("kind 'device' needs the device model's joblib file")
        return self


class BundleManifest(_Frozen):
    """The bundle's manifest.json."""

    schema_id: Literal["edgefleet.bundle/1"] = Field(default="edgefleet.bundle/1", alias="schema")
    bundle_version: str
    created_at: str
    features: tuple[str, ...]
    target: str
    libraries: dict[str, str]
    feature_stats: dict[str, FeatureStats]
    fleet: FleetEntry
    devices: dict[str, DeviceEntry]
    mlflow_run_id: str | None = None

    @model_validator(mode="after")
    def _corrections_match_features(self) -> BundleManifest:
        n_features = len(self.features)
        for device_id, entry in self.devices.items():
            correction = entry.correction
            if correction is not None and len(correction.coef) != n_features:
                raise ValueError(
                    f"device {device_id!r}: its correction has {len(correction.coef)} coefficient(s) for "
                    f"{n_features} feature(s) ({', '.join(self.features)}); give one per feature, in that order"
                )
        return self

    def files(self) -> Iterable[ModelFile]:
        """Yield every file the manifest pins."""
        entries: list[FleetEntry | DeviceEntry] = [self.fleet, *self.devices.values()]
        for entry in entries:
            for model_file in (entry.joblib, entry.onnx):
                if model_file is not None:
                    yield model_file

    def to_json(self) -> str:
        """Serialise with the contract's field names, compactly (10,000 devices with feature references: 11 MB)."""
        return self.model_dump_json(by_alias=True)


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_file_stem(device_id: str) -> str:
    """Return a filesystem-safe, collision-free file stem for a device id."""
    if _SAFE_NAME.match(device_id) and device_id != "fleet":
        return device_id
    return "id-" + hashlib.sha256(device_id.encode()).hexdigest()[:24]


def read_manifest(bundle_dir: Path) -> BundleManifest:
    """Parse and validate manifest.json, or raise BundleError saying what is wrong."""
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"Bundle directory not found: {bundle_dir}")
    if not path.is_file():
        raise BundleError(f"{path}: missing; this is not an edgefleet bundle (run `edgefleet train` to build one)")
    try:
        return BundleManifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise BundleError(f"{path}: invalid manifest{f' at {where}' if where else ''}: {message}") from err


@dataclass(frozen=True)
class BundleProblem:
    """One reason a bundle does not match its manifest."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def _resolve_inside(bundle_dir: Path, rel: str, root: str | None = None) -> Path | None:
    """Return the file's path if `rel` stays inside the bundle (by name: contents are pinned by sha256)."""
    path = _inside(root or os.path.abspath(bundle_dir), rel)
    return None if path is None else Path(path)


def _inside(root: str, rel: str) -> str | None:
    """Return `root`/`rel` normalised, or None when `rel` is absolute or climbs out of `root`."""
    if os.path.isabs(rel):
        return None
    candidate = os.path.normpath(os.path.join(root, rel))
    return candidate if candidate.startswith(root + os.sep) else None


def verify_bundle(bundle_dir: Path, manifest: BundleManifest | None = None) -> list[BundleProblem]:
    """Check every pinned file's presence, size and sha256, and flag unpinned model files."""
    if manifest is None:
        try:
            manifest = read_manifest(bundle_dir)
        except BundleError as err:
            return [BundleProblem(MANIFEST_NAME, str(err))]
    problems: list[BundleProblem] = []
    root = os.path.abspath(bundle_dir)
    # Plain strings, one open and one read per file: a 10,000-device bundle has 20,002 files and
    # Path objects and chunked reads cost more than the hashing. Serial on purpose: for ~40 KB
    # model files, threads measured slower (GIL hand-offs).
    pinned: set[str] = set()
    for model_file in manifest.files():
        path = _inside(root, model_file.path)
        if path is None:
            problems.append(BundleProblem(model_file.path, "path points outside the bundle"))
            continue
        pinned.add(path)
        problem = _check_file(model_file, path)
        if problem is not None:
            problems.append(problem)
    manifest_path = os.path.join(root, MANIFEST_NAME)
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if path not in pinned and path != manifest_path:
                problems.append(BundleProblem(os.path.relpath(path, root), "not listed in the manifest"))
    return problems


# Files up to this size are read with one call; bigger ones (a large fleet model) in chunks of it.
_ONE_READ_BYTES = 1 << 20


def _check_file(model_file: ModelFile, path: str) -> BundleProblem | None:
    """Return the problem with one pinned file, or None when it matches the manifest."""
    try:
        with open(path, "rb", buffering=0) as fh:
            status = os.fstat(fh.fileno())
            if not stat.S_ISREG(status.st_mode):
                return BundleProblem(model_file.path, "missing")
            if status.st_size != model_file.size_bytes:
                return BundleProblem(model_file.path, f"size {status.st_size} != manifest {model_file.size_bytes}")
            digest = _sha256_open_file(fh, status.st_size)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return BundleProblem(model_file.path, "missing")
    except OSError as err:
        return BundleProblem(model_file.path, f"unreadable: {err.strerror or err}")
    if digest != model_file.sha256:
        return BundleProblem(model_file.path, "sha256 does not match the manifest (file was modified)")
    return None


def _sha256_open_file(fh: io.RawIOBase, size_bytes: int) -> str:
    """Return the hex sha256 of an open file of known size: one read when small, chunks when large."""
    if size_bytes <= _ONE_READ_BYTES:
        data = fh.read(size_bytes + 1) or b""  # the extra byte shows a file that grew since fstat
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(_ONE_READ_BYTES), b""):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Route:
    """Which model serves a device, and why when it is not the device's own.

    `device_id` is set for the device's own model and for `fleet_corrected` (whose correction
    is the device's), None for the plain fleet model.
    """

    kind: ModelKind
    device_id: str | None
    fallback_reason: str | None


class _OnnxModel:
    """Single-threaded onnxruntime session with a scikit-learn-like predict."""

    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        # A value beyond float32 (a sensor's 1e39 sentinel) becomes inf; the caller handles what that predicts.
        with np.errstate(over="ignore"):
            x32 = np.ascontiguousarray(x, dtype=np.float32)
        out = self._session.run(None, {self._input: x32})[0]
        return np.asarray(out, dtype=float).reshape(-1)


class CorrectedModel:
    """The fleet model plus one device's correction: predict(x) = fleet(x) + intercept + x @ coef."""

    __slots__ = ("coef", "fleet", "intercept")

    def __init__(self, fleet: Any, intercept: float, coef: np.ndarray) -> None:
        self.fleet = fleet
        self.intercept = intercept
        self.coef = coef

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        # One fleet call and one matrix-vector product; `dot` and in-place adds measured fastest for small batches.
        out: np.ndarray = x.dot(self.coef)
        out += self.intercept
        out += np.asarray(self.fleet.predict(x), dtype=float).reshape(-1)
        return out


class BundleReader:
    """Open a bundle and serve models lazily, verifying each file's sha256 before loading it.

    Models live in an LRU bounded by `cache_bytes` of estimated memory (`memory_estimate`).
    """

    def __init__(
        self,
        bundle_dir: Path,
        runtime: Runtime = "auto",
        cache_bytes: int = 256 << 20,
        manifest: BundleManifest | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        # A caller that has parsed the manifest already passes it: a 10,000-device manifest takes 0.5 s.
        self.manifest = manifest if manifest is not None else read_manifest(self.bundle_dir)
        self.runtime = runtime
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._fill = np.array([self.manifest.feature_stats[f].mean for f in self.manifest.features])
        # Corrections as numpy arrays, made on a device's first use: opening costs nothing per device.
        self._corrections: dict[str, tuple[float, np.ndarray]] = {}

    @property
    def features(self) -> tuple[str, ...]:
        return self.manifest.features

    def route(self, device_id: str) -> Route:
        """Return the model that serves `device_id`: its entry's `kind`, or (bundles without one) its status."""
        entry = self.manifest.devices.get(device_id)
        if entry is None:
            return Route("fleet", None, "no_model")
        if entry.kind == "fleet_corrected":
            return Route("fleet_corrected", device_id, None)
        if entry.kind == "device":
            return Route("device", device_id, None)  # the manifest's validation saw its joblib file
        if entry.kind == "fleet":
            # Training chose the fleet model over a model it had (poor_model), or had none to offer.
            return Route("fleet", None, "poor_model" if entry.status in ("trained", "fallback") else "no_model")
        if entry.joblib is None:
            return Route("fleet", None, "no_model")
        if entry.status == "fallback":
            return Route("fleet", None, "poor_model")
        if entry.status != "trained":
            return Route("fleet", None, "no_model")
        return Route("device", device_id, None)

    def correction(self, device_id: str) -> tuple[float, np.ndarray] | None:
        """Return a device's correction as (intercept, coef in feature order), or None when it has none."""
        hit = self._corrections.get(device_id)
        if hit is not None:
            return hit
        entry = self.manifest.devices.get(device_id)
        if entry is None or entry.correction is None:
            return None
        coef = np.array(entry.correction.coef, dtype=float)
        coef.setflags(write=False)
        hit = self._corrections[device_id] = (float(entry.correction.intercept), coef)
        return hit

    def corrected(self, fleet: Any, device_id: str) -> CorrectedModel:
        """Return `fleet` plus the device's correction (BundleError when the device has none)."""
        correction = self.correction(device_id)
        if correction is None:
            raise BundleError(f"device {device_id!r} has no correction in the manifest")
        return CorrectedModel(fleet, *correction)

    @property
    def fill_values(self) -> np.ndarray:
        """Return the fleet means used in place of missing features, in feature order."""
        return self._fill

    @property
    def cached_bytes(self) -> int:
        """Return the estimated memory of the models held in the cache."""
        with self._lock:
            return self._cached_bytes

    def cached(self, route: Route) -> Any | None:
        """Return a route's model if it is loaded, without loading it."""
        if route.kind == "fleet_corrected":
            fleet = self.cached(_FLEET_ROUTE)
            return None if fleet is None else self.corrected(fleet, _device_of(route))
        key = route.device_id or _FLEET_KEY
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            self._cache.move_to_end(key)
            return hit[0]

    def _pick_file(self, joblib_file: ModelFile, onnx_file: ModelFile | None) -> tuple[ModelFile, str]:
        if self.runtime != "joblib" and onnx_file is not None:
            return onnx_file, "onnx"
        if self.runtime == "onnx":
            raise BundleError(f"{joblib_file.path}: no ONNX file in the bundle; use runtime 'auto' or 'joblib'")
        return joblib_file, "joblib"

    def model(self, route: Route) -> Any:
        """Return the loaded model for a route (from cache, or verified from disk)."""
        if route.kind == "fleet_corrected":
            return self.corrected(self.model(_FLEET_ROUTE), _device_of(route))
        key = route.device_id or _FLEET_KEY
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[0]
        if route.device_id is None:
            entry_files: tuple[ModelFile, ModelFile | None] = (self.manifest.fleet.joblib, self.manifest.fleet.onnx)
        else:
            device = self.manifest.devices[route.device_id]
            assert device.joblib is not None  # route() only sends trained devices here
            entry_files = (device.joblib, device.onnx)
        model_file, kind = self._pick_file(*entry_files)
        data = self._read_verified(model_file)
        model = _OnnxModel(data) if kind == "onnx" else _load_joblib(data, model_file.path)
        cost = memory_estimate(len(data), kind)
        with self._lock:
            if key in self._cache:  # loaded twice at once: keep one
                return self._cache[key][0]
            self._cache[key] = (model, cost)
            self._cached_bytes += cost
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, (_, size) = self._cache.popitem(last=False)
                self._cached_bytes -= size
        return model

    def _read_verified(self, model_file: ModelFile) -> bytes:
        path = _resolve_inside(self.bundle_dir, model_file.path)
        if path is None:
            raise BundleError(f"{model_file.path}: path points outside the bundle; refusing it")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BundleError(f"{model_file.path}: cannot read ({err})") from err
        if sha256_bytes(data) != model_file.sha256:
            raise BundleError(f"{model_file.path}: sha256 does not match the manifest; refusing to load it")
        return data

    def predict(self, device_id: str, x: np.ndarray) -> tuple[np.ndarray, Route]:
        """Predict rows of one device; rows with missing features use the fleet model on filled values."""
        x = np.asarray(x, dtype=float).reshape(-1, len(self.features))
        route = self.route(device_id)
        out = np.empty(x.shape[0])
        usable = usable_values(x)
        complete = usable.all(axis=1)
        if complete.any():
            out[complete] = self.model(route).predict(x[complete])
        if not complete.all():
            filled = np.where(usable[~complete], x[~complete], self._fill)
            out[~complete] = self.model(Route("fleet", None, "missing_features")).predict(filled)
        return out, route


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def usable_values(x: np.ndarray) -> np.ndarray:
    """Return which feature values a model can take: finite and within float32 (edge runtimes' type).

    A sensor's 1e39 sentinel is finite in float64 but overflows the float32 that scikit-learn's
    trees and ONNX Runtime use; such a value counts as missing, so one reading cannot fail a batch.
    """
    with np.errstate(invalid="ignore"):
        usable: np.ndarray = np.isfinite(x) & (np.abs(x) <= _FLOAT32_MAX)
    return usable


_FLEET_ROUTE = Route("fleet", None, "no_model")


def _device_of(route: Route) -> str:
    if route.device_id is None:
        raise BundleError(f"a {route.kind} route needs a device id")
    return route.device_id


def memory_estimate(file_bytes: int, kind: str) -> int:
    """Return the memory a model loaded from a file of `file_bytes` is expected to hold."""
    if kind == "onnx":
        return file_bytes * ONNX_BYTES_PER_FILE_BYTE + ONNX_SESSION_BYTES
    return file_bytes * JOBLIB_BYTES_PER_FILE_BYTE


def _load_joblib(data: bytes, name: str) -> Any:
    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as err:  # a corrupt pickle can raise almost anything
        raise BundleError(f"{name}: cannot load model ({type(err).__name__}: {err})") from err


def inspect_bundle(bundle_dir: Path) -> dict[str, Any]:
    """Summarise a bundle for humans and scripts."""
    manifest = read_manifest(bundle_dir)
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for entry in manifest.devices.values():
        statuses[entry.status] = statuses.get(entry.status, 0) + 1
        if entry.reason:
            reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    sizes = [f.size_bytes for e in manifest.devices.values() for f in (e.joblib,) if f is not None]
    total = sum(f.size_bytes for f in manifest.files())
    return {
        "bundle_version": manifest.bundle_version,
        "created_at": manifest.created_at,
        "features": list(manifest.features),
        "target": manifest.target,
        "devices": len(manifest.devices),
        "status_counts": statuses,
        "reason_counts": reasons,
        "fleet_family": manifest.fleet.family,
        "mean_device_model_bytes": float(np.mean(sizes)) if sizes else 0.0,
        "total_bytes": total,
        "libraries": manifest.libraries,
        "mlflow_run_id": manifest.mlflow_run_id,
    }
