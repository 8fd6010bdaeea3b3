"""The deployment schema's vocabulary: twin names, allowed values, limits, and createOptions decoding.

Values follow Microsoft's "Properties of the IoT Edge agent and IoT Edge hub module twins" and the
SchemaStore schemas `azure-iot-edgeagent-deployment-1.1.json` / `azure-iot-edgehub-deployment-1.2.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from edgefleet.errors import EdgefleetError

__all__ = [
    "AGENT",
    "AGENT_SCHEMA_VERSIONS",
    "CREATE_OPTIONS_CHUNK",
    "CREATE_OPTIONS_MAX_CHARS",
    "CREATE_OPTIONS_MAX_CHUNKS",
    "DESIRED",
    "HUB",
    "HUB_SCHEMA_VERSIONS",
    "IMAGE_PULL_POLICIES",
    "MAX_DESIRED_BYTES",
    "MAX_STARTUP_ORDER",
    "MODULE_STATUSES",
    "RESTART_POLICIES",
    "DeploymentError",
    "decode_create_options",
    "json_kind",
]

AGENT: Final = "$edgeAgent"
HUB: Final = "$edgeHub"
DESIRED: Final = "properties.desired"
AGENT_SCHEMA_VERSIONS: Final = ("1.0", "1.1")
HUB_SCHEMA_VERSIONS: Final = ("1.0", "1.1", "1.2")
MODULE_STATUSES: Final = ("running", "stopped")
RESTART_POLICIES: Final = ("never", "on-failure", "on-unhealthy", "always")
# Accepted by the schema, but IoT Edge 1.5 restarts only for "always" (Microsoft's twin-properties page).
UNIMPLEMENTED_RESTART_POLICIES: Final = ("on-failure", "on-unhealthy")
IMAGE_PULL_POLICIES: Final = ("on-create", "never")
MAX_STARTUP_ORDER: Final = 4_294_967_295
# iotedgedev stringifies createOptions minified and cuts it into chunks of 512 characters, at most 8.
CREATE_OPTIONS_CHUNK: Final = 512
CREATE_OPTIONS_MAX_CHUNKS: Final = 8
CREATE_OPTIONS_MAX_CHARS: Final = CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS
# IoT Hub limits each twin section (tags, desired, reported) to 32 KB.
MAX_DESIRED_BYTES: Final = 32 * 1024

MODULE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]+$")  # the edgeAgent schema's module-name pattern
ENV_NAME: Final = re.compile(r"^[^+#$\s.]+$")  # the edgeAgent schema's env-variable-name pattern
ROUTE_NAME: Final = re.compile(r"^[^.$# ]+$")  # the edgeHub schema's route-name pattern
# Twin keys: no C0/C1 control characters, '.', '$' or space (IoT Hub device-twin rules).
BAD_TWIN_KEY_CHAR: Final = re.compile(r"[\x00-\x1f\x7f-\x9f.$ ]")
CREATE_OPTIONS_KEY: Final = re.compile(r"^createOptions(\d{2})?$")
SYSTEM_MODULES: Final = ("edgeAgent", "edgeHub")
TOP_LEVEL_KEYS: Final = ("$schema-template", "modulesContent")
AGENT_KEYS: Final = ("schemaVersion", "runtime", "systemModules", "modules")
HUB_KEYS: Final = ("schemaVersion", "routes", "storeAndForwardConfiguration")
RUNTIME_KEYS: Final = ("type", "settings")
RUNTIME_SETTINGS_KEYS: Final = ("minDockerVersion", "loggingOptions", "registryCredentials")
REGISTRY_CREDENTIAL_KEYS: Final = ("username", "password", "address")
MODULE_KEYS: Final = (
    "version",
    "type",
    "status",
    "restartPolicy",
    "imagePullPolicy",
    "startupOrder",
    "settings",
    "env",
)


class DeploymentError(EdgefleetError):
    """Raise when a deployment manifest cannot be read or is not a valid manifest."""


def decode_create_options(settings: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Return createOptions as an object (template or chunked-string form), or None and why not."""
    keys = sorted(key for key in settings if CREATE_OPTIONS_KEY.fullmatch(key))
    if not keys:
        return {}, None
    first = settings.get("createOptions")
    if isinstance(first, Mapping):
        if len(keys) > 1:
            return None, "as an object cannot be continued in createOptions01...: merge them into one object"
        return dict(first), None
    if first is None:
        return None, f"is missing but {keys[0]} continues it"
    return _decode_chunks(settings, keys)


def _decode_chunks(settings: Mapping[str, Any], keys: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """Join the deployed form's createOptions string chunks and parse them as one JSON object."""
    chunks = [settings[key] for key in keys]
    if not all(isinstance(chunk, str) for chunk in chunks):
        return None, "must be a JSON object (template) or a JSON string (deployed manifest)"
    expected = ["createOptions", *(f"createOptions{index:02d}" for index in range(1, len(keys)))]
    if keys != expected:
        return None, f"chunks must be numbered without gaps ({', '.join(expected)}), found {', '.join(keys)}"
    text = "".join(chunks).strip()
    if not text:
        return {}, None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the createOptions string is not valid JSON: {exc.msg} at character {exc.pos}"
    if not isinstance(parsed, dict):
        return None, f"must hold a JSON object, not {json_kind(parsed)}"
    return parsed, None


def json_kind(value: object) -> str:
    """Name a JSON value's type for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
