"""Load a deployment manifest: read the JSON, expand `${NAME}` placeholders, build a typed Deployment.

The template follows the iotedgedev conventions: `${NAME}` placeholders (images are `${MODULES.<name>}`)
and `createOptions` written as a JSON object. The deployed manifest carries `createOptions` as a JSON
string cut into 512-character chunks (`createOptions`, `createOptions01`, ...); both forms are read.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgefleet.deployment.checks import check_structure
from edgefleet.deployment.schema import AGENT, DESIRED, HUB, DeploymentError, decode_create_options, json_kind
from edgefleet.routes import Route, parse_routes

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATE",
    "Deployment",
    "ModuleSpec",
    "expand_placeholders",
    "load_deployment",
    "parse_deployment",
    "parse_variables",
    "read_manifest_json",
]

DEFAULT_TEMPLATE: Final = Path("deployment") / "deployment.template.json"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """One custom module as `$edgeAgent` deploys it."""

    name: str
    image: str
    status: str
    restart_policy: str
    version: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    create_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Deployment:
    """A loaded deployment manifest (treat its dicts as read-only)."""

    raw: dict[str, Any]
    routes: list[Route]
    modules: dict[str, ModuleSpec]
    store_and_forward_ttl_s: int
    source: Path | None = None

    def desired(self, module: str) -> dict[str, Any]:
        """Return a copy of the module twin's desired properties, or {} when the manifest sets none."""
        twin = self.raw["modulesContent"].get(module)
        if not isinstance(twin, dict) or not isinstance(twin.get(DESIRED), dict):
            return {}
        desired: dict[str, Any] = copy.deepcopy(twin[DESIRED])
        return desired


def load_deployment(path: str | Path, variables: Mapping[str, str] | None = None) -> Deployment:
    """Read a manifest, expand `${NAME}` placeholders from `variables`, and check its structure.

    With `variables=None` placeholders stay as written (the local stand-in reads the template so);
    with variables, a placeholder left without a value is an error. Only structural errors raise:
    run `validate_deployment` for the route and endpoint cross-checks.
    """
    path = Path(path)
    return parse_deployment(read_manifest_json(path), variables, source=path)


def parse_deployment(
    raw: Mapping[str, Any], variables: Mapping[str, str] | None = None, *, source: Path | None = None
) -> Deployment:
    """Build a Deployment from an already-parsed manifest, as `load_deployment` does from a file."""
    expanded = expand_placeholders(raw, variables, source)
    errors = [problem for problem in check_structure(expanded).problems if problem.severity == "error"]
    if errors:
        label = str(source) if source is not None else "deployment manifest"
        details = "\n".join(f"  {problem}" for problem in errors)
        raise DeploymentError(f"{label} is not a valid deployment manifest ({len(errors)} error(s)):\n{details}")
    deployment = _build(expanded, source)
    logger.debug("loaded deployment %s: %d modules, %d routes", source, len(deployment.modules), len(deployment.routes))
    return deployment


def read_manifest_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from a file, refusing duplicate keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeploymentError(f"{path}: no such file (the template is {DEFAULT_TEMPLATE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"{path}: cannot read it as UTF-8 text: {exc}") from exc
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DeploymentError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; fix the syntax there"
        ) from exc
    except DeploymentError as exc:
        raise DeploymentError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DeploymentError(f"{path}: a deployment manifest is a JSON object, not {json_kind(data)}")
    return data


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, raising on a repeated key (json would silently keep the last one)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DeploymentError(f'key "{key}" appears twice in one object: the second would silently win; keep one')
        result[key] = value
    return result


def expand_placeholders(
    raw: Mapping[str, Any], variables: Mapping[str, str] | None, source: Path | None
) -> dict[str, Any]:
    """Return a deep copy of the manifest with `${NAME}` placeholders in string values replaced."""
    missing: dict[str, str] = {}  # placeholder name -> first place it appears

    def walk(value: object, where: str) -> object:
        if isinstance(value, Mapping):
            return {key: walk(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, str) and variables is not None:
            return _substitute(value, variables, lambda name: missing.setdefault(name, where))
        return value

    expanded = {key: walk(item, str(key)) for key, item in raw.items()}
    if missing:
        _raise_missing(missing, source)
    if variables is not None:
        logger.debug("expanded %d variable(s) into %s", len(variables), source)
    return expanded


def _substitute(text: str, variables: Mapping[str, str], note_missing: Callable[[str], object]) -> str:
    """Replace each `${NAME}` in text that has a value; report the others to `note_missing`."""

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        note_missing(name)
        return match.group(0)

    return _PLACEHOLDER.sub(value_of, text)


def _raise_missing(missing: Mapping[str, str], source: Path | None) -> None:
    """Raise naming every placeholder without a value, where it first appears, and how to set it."""
    label = str(source) if source is not None else "deployment manifest"
    lines = [f"  ${{{name}}} (first at {where})" for name, where in missing.items()]
    example = " ".join(f"--var {name}=VALUE" for name in missing)
    raise DeploymentError(
        f"{label}: {len(missing)} placeholder(s) have no value:\n"
        + "\n".join(lines)
        + f"\npass them in `variables` (CLI: {example})"
    )


def _build(raw: dict[str, Any], source: Path | None) -> Deployment:
    """Assemble a Deployment from a manifest that passed the structural checks."""
    content = raw["modulesContent"]
    agent = content[AGENT][DESIRED]
    hub = content[HUB][DESIRED]
    modules = {name: _module_spec(name, spec) for name, spec in agent["modules"].items()}
    routes = parse_routes(hub["routes"])
    ttl = hub["storeAndForwardConfiguration"]["timeToLiveSecs"]
    return Deployment(raw=raw, routes=routes, modules=modules, store_and_forward_ttl_s=ttl, source=source)


def _module_spec(name: str, spec: Mapping[str, Any]) -> ModuleSpec:
    """Type one `$edgeAgent` module entry that passed the structural checks."""
    settings = spec["settings"]
    env = {key: _env_text(entry["value"]) for key, entry in spec.get("env", {}).items()}
    return ModuleSpec(
        name=name,
        image=settings["image"],
        status=spec["status"],
        restart_policy=spec["restartPolicy"],
        version=spec.get("version"),
        env=env,
        create_options=decode_create_options(settings)[0] or {},
    )


def _env_text(value: object) -> str:
    """Return an env value as the container sees it: text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_variables(items: Iterable[str] | None) -> dict[str, str] | None:
    """Turn CLI `NAME=VALUE` items into a variables mapping; None when there are none."""
    if not items:
        return None
    variables: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _PLACEHOLDER.fullmatch(f"${{{name}}}"):
            raise DeploymentError(f"bad variable {item!r}: write NAME=VALUE, e.g. BUNDLE_VERSION=20261121-abc123")
        variables[name] = value
    return variables
