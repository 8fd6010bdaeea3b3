"""Module twins as edgeHub keeps them: desired and reported properties with `$version`s, kept in the state dir.

Each module's twin is one JSON file, `<state_dir>/twins/<module>.json` (folder 0700, file 0600,
written atomically), rewritten at every change, so reported properties, operator patches and
both `$version`s survive a stand-in restart (the SDK's patch handlers and modules comparing
`$version`s rely on versions never going back).

The deployment manifest sets desired properties the way applying a deployment does on IoT Hub:
once. The file keeps the manifest's desired set it was last given (`deployment`). At start:

- no file: desired = the manifest's, both `$version`s 1 (IoT Hub's new twin);
- the manifest's desired set is unchanged: the twin stays as it was, operator patches included;
- it changed (a new deployment): desired = the manifest's, replacing earlier patches, and the
  desired `$version` goes up by one. Reported properties are kept in every case.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import private_dir, write_atomic
from edgefleet.routes import Message

logger = logging.getLogger(__name__)

__all__ = ["TWINS_DIR", "Twin", "TwinError", "TwinStore", "merge_patch", "strip_metadata", "twin_change_notification"]

TWINS_DIR = "twins"
_FILE_KEYS = {"deployment", "desired", "desiredVersion", "reported", "reportedVersion"}


class TwinError(EdgefleetError):
    """Raise for a twin request that cannot be served (unknown module, bad patch) or an unreadable twin file."""


@dataclass(slots=True)
class Twin:
    """One module twin's properties with their `$version`s (IoT Hub starts both at 1)."""

    desired: dict[str, Any]
    reported: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1
    # The manifest's desired set this twin was last deployed with.
    deployment: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """Return the twin as the MQTT twin GET returns it."""
        return {
            "desired": {**copy.deepcopy(self.desired), "$version": self.desired_version},
            "reported": {**copy.deepcopy(self.reported), "$version": self.reported_version},
        }

    def record(self) -> dict[str, Any]:
        """Return what the twin file holds."""
        return {
            "deployment": self.deployment,
            "desired": self.desired,
            "desiredVersion": self.desired_version,
            "reported": self.reported,
            "reportedVersion": self.reported_version,
        }


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """Apply a twin patch in place: null deletes, objects merge, `$`-keys (metadata) are ignored."""
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            current = target.get(key)
            if not isinstance(current, dict):
                current = target[key] = {}
            merge_patch(current, value)
        else:
            target[key] = copy.deepcopy(value)


def strip_metadata(patch: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a patch without `$version`/`$metadata` keys at the top level."""
    return {key: copy.deepcopy(value) for key, value in patch.items() if not key.startswith("$")}


def twin_change_notification(
    edge_device: str, module: str, hub_name: str, patch: Mapping[str, Any], version: int
) -> Message:
    """Build the `/twinChangeNotifications` message IoT Hub emits for a reported change."""
    body = {"version": version, "properties": {"reported": strip_metadata(patch)}}
    return Message(
        connection_device_id=edge_device,
        connection_module_id=module,
        properties={
            "hubName": hub_name,
            "deviceId": edge_device,
            "moduleId": module,
            "opType": "updateTwin",
            "iothub-message-schema": "twinChangeNotification",
        },
        system_properties={"contentType": "application/json", "contentEncoding": "utf-8"},
        body=json.dumps(body).encode("utf-8"),
        kind="twin_change_notification",
    )


def _well_formed(record: Any) -> bool:
    """Return whether a twin file's content has the fields and types `Twin.record` writes."""
    if not isinstance(record, dict) or set(record) != _FILE_KEYS:
        return False
    versions = (record["desiredVersion"], record["reportedVersion"])
    return all(isinstance(record[key], dict) for key in ("deployment", "desired", "reported")) and all(
        isinstance(version, int) and version >= 1 for version in versions
    )


class TwinStore:
    """Every module's twin, thread-safe; kept in `folder` (one file per module) when given."""

    def __init__(
        self, modules: Sequence[str], desired: Mapping[str, Mapping[str, Any]], folder: Path | None = None
    ) -> None:
        unknown = sorted(set(desired) - set(modules))
        if unknown:
            raise TwinError(f"desired properties for unknown module(s): {', '.join(unknown)}")
        self.folder = folder
        self._lock = threading.Lock()
        self._write_errors = 0
        if folder is not None:
            try:
                private_dir(folder)
            except OSError as err:
                raise TwinError(f"cannot create the twin folder {folder} ({err}): pass a writable state dir") from None
        self._twins: dict[str, Twin] = {}
        for module in modules:
            deployment = copy.deepcopy(dict(desired.get(module, {})))
            self._twins[module] = self._load(module, deployment)

    @property
    def modules(self) -> tuple[str, ...]:
        """Return the modules that have a twin."""
        return tuple(self._twins)

    def _path(self, module: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{module}.json"

    def _load(self, module: str, deployment: dict[str, Any]) -> Twin:
        """Return a module's twin from its file, reconciled with the manifest's desired set."""
        fresh = Twin(desired=copy.deepcopy(deployment), deployment=deployment)
        if self.folder is None:
            return fresh
        path = self._path(module)
        if not path.exists():
            self._write(module, fresh)
            return fresh
        fix = f"delete {path} to start {module}'s twin again from the manifest (its reported properties are lost)"
        try:
            record = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise TwinError(f"cannot read the twin of {module} from {path} ({err}): {fix}") from None
        if not _well_formed(record):
            raise TwinError(f"the twin file {path} of {module} is not one the stand-in wrote: {fix}")
        twin = Twin(
            desired=record["desired"],
            reported=record["reported"],
            desired_version=record["desiredVersion"],
            reported_version=record["reportedVersion"],
            deployment=record["deployment"],
        )
        if twin.deployment != deployment:
            # A new deployment: as on IoT Hub, its desired set replaces the twin's, under a new $version.
            twin.desired, twin.deployment = copy.deepcopy(deployment), deployment
            twin.desired_version += 1
            logger.info(
                "The manifest changed the desired properties of %s: the twin takes them ($version %d)",
                module,
                twin.desired_version,
            )
            self._write(module, twin)
        return twin

    def _write(self, module: str, twin: Twin) -> None:
        """Keep a twin on disk; on failure log how to fix it (the twin still works, until a restart)."""
        if self.folder is None:
            return
        try:
            write_atomic(self._path(module), json.dumps(twin.record(), separators=(",", ":")).encode("utf-8"))
        except OSError as err:
            self._write_errors += 1
            if self._write_errors <= 5:
                logger.error(
                    "Cannot keep the twin of %s in %s (%s): a stand-in restart would lose its latest changes; "
                    "free disk space or make the state dir writable",
                    module,
                    self.folder,
                    err,
                )

    def _twin(self, module: str) -> Twin:
        """Return a module's twin (call with the lock held)."""
        try:
            return self._twins[module]
        except KeyError:
            raise TwinError(f"unknown module {module!r}; the stand-in runs {', '.join(sorted(self._twins))}") from None

    def check(self, module: str) -> None:
        """Raise TwinError unless `module` has a twin."""
        with self._lock:
            self._twin(module)

    def document(self, module: str) -> dict[str, Any]:
        """Return a copy of a module's twin (desired and reported, with `$version`s)."""
        with self._lock:
            return self._twin(module).document()

    def apply_desired(self, module: str, patch: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """Merge a desired patch; return the patch as modules get it (without metadata) and the new `$version`."""
        if not isinstance(patch, Mapping):
            raise TwinError(f"a desired patch must be a JSON object, not {type(patch).__name__}")
        clean = strip_metadata(patch)
        with self._lock:
            twin = self._twin(module)
            merge_patch(twin.desired, clean)
            twin.desired_version += 1
            self._write(module, twin)
            return clean, twin.desired_version

    def apply_reported(self, module: str, patch: Mapping[str, Any]) -> int:
        """Merge a module's reported patch; return the new reported `$version`."""
        with self._lock:
            twin = self._twin(module)
            merge_patch(twin.reported, patch)
            twin.reported_version += 1
            self._write(module, twin)
            return twin.reported_version
