"""The IoT Edge deployment manifest: load `deployment/deployment.template.json` and validate it offline.

The manifest is the single source of the edge's modules, routes and module-twin desired properties
(docs/architecture.md). Its shape follows Microsoft's "Properties of the IoT Edge agent and IoT Edge
hub module twins" and the SchemaStore schemas `azure-iot-edgeagent-deployment-1.1.json` /
`azure-iot-edgehub-deployment-1.2.json`:

    {"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion", "runtime", "systemModules", "modules"}},
        "$edgeHub": {"properties.desired": {"schemaVersion", "routes", "storeAndForwardConfiguration"}},
        "<module>": {"properties.desired": {...}}}}

The template follows the iotedgedev conventions: `${NAME}` placeholders (images are `${MODULES.<name>}`)
and `createOptions` written as a JSON object. The deployed manifest carries `createOptions` as a JSON
string cut into 512-character chunks (`createOptions`, `createOptions01`, ...); both forms are read.

`validate_deployment` adds what a schema cannot check: the route grammar (edgefleet.routes), that
routes name modules the manifest deploys, and that they use the inputs and outputs the modules' code
declares (edgefleet.endpoints).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edgefleet.endpoints import MODULES, ModuleEndpoints
from edgefleet.errors import EdgefleetError
from edgefleet.routes import Route, RouteError, parse_routes, referenced_endpoints

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATE",
    "Deployment",
    "DeploymentError",
    "ModuleSpec",
    "Problem",
    "Severity",
    "load_deployment",
    "parse_deployment",
    "parse_variables",
    "validate_deployment",
]

Severity = Literal["error", "warning"]

DEFAULT_TEMPLATE: Final = Path("deployment") / "deployment.template.json"

AGENT, HUB, DESIRED = "$edgeAgent", "$edgeHub", "properties.desired"
AGENT_SCHEMA_VERSIONS: Final = ("1.0", "1.1")
HUB_SCHEMA_VERSIONS: Final = ("1.0", "1.1", "1.2")
MODULE_STATUSES: Final = ("running", "stopped")
RESTART_POLICIES: Final = ("never", "on-failure", "on-unhealthy", "always")
# Accepted by the schema, but IoT Edge 1.5 restarts only for "always" (Microsoft's twin-properties page).
_UNIMPLEMENTED_RESTART_POLICIES: Final = ("on-failure", "on-unhealthy")
IMAGE_PULL_POLICIES: Final = ("on-create", "never")
MAX_STARTUP_ORDER: Final = 4_294_967_295
# iotedgedev stringifies createOptions minified and cuts it into chunks of 512 characters, at most 8.
CREATE_OPTIONS_CHUNK: Final = 512
CREATE_OPTIONS_MAX_CHUNKS: Final = 8
CREATE_OPTIONS_MAX_CHARS: Final = CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS
# IoT Hub limits each twin section (tags, desired, reported) to 32 KB.
MAX_DESIRED_BYTES: Final = 32 * 1024

_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # the edgeAgent schema's module-name pattern
_ENV_NAME = re.compile(r"^[^+#$\s.]+$")  # the edgeAgent schema's env-variable-name pattern
_ROUTE_NAME = re.compile(r"^[^.$# ]+$")  # the edgeHub schema's route-name pattern
# Twin keys: no C0/C1 control characters, '.', '$' or space (IoT Hub device-twin rules).
_BAD_TWIN_KEY_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f.$ ]")
_CREATE_OPTIONS_KEY = re.compile(r"^createOptions(\d{2})?$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_SYSTEM_MODULES: Final = ("edgeAgent", "edgeHub")
_TOP_LEVEL_KEYS: Final = ("$schema-template", "modulesContent")
_AGENT_KEYS: Final = ("schemaVersion", "runtime", "systemModules", "modules")
_HUB_KEYS: Final = ("schemaVersion", "routes", "storeAndForwardConfiguration")
_MODULE_KEYS: Final = (
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


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of the validator; `where` names the route, module or manifest section."""

    where: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.where}: {self.message}"


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
        return copy.deepcopy(twin[DESIRED])


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_deployment(path: str | Path, variables: Mapping[str, str] | None = None) -> Deployment:
    """Read a manifest, expand `${NAME}` placeholders from `variables`, and check its structure.

    With `variables=None` placeholders stay as written (the local stand-in reads the template so);
    with variables, a placeholder left without a value is an error. Only structural errors raise:
    run `validate_deployment` for the route and endpoint cross-checks.
    """
    path = Path(path)
    return parse_deployment(_read_json(path), variables, source=path)


def parse_deployment(
    raw: Mapping[str, Any], variables: Mapping[str, str] | None = None, *, source: Path | None = None
) -> Deployment:
    """Build a Deployment from an already-parsed manifest, as `load_deployment` does from a file."""
    expanded = _expand(raw, variables, source)
    problems = _Checker(expanded, endpoints=None).run()
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        label = str(source) if source is not None else "deployment manifest"
        details = "\n".join(f"  {problem}" for problem in errors)
        raise DeploymentError(f"{label} is not a valid deployment manifest ({len(errors)} error(s)):\n{details}")
    deployment = _build(expanded, source)
    logger.debug("loaded deployment %s: %d modules, %d routes", source, len(deployment.modules), len(deployment.routes))
    return deployment


def _read_json(path: Path) -> dict[str, Any]:
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
        raise DeploymentError(f"{path}: a deployment manifest is a JSON object, not {_kind(data)}")
    return data


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, raising on a repeated key (json would silently keep the last one)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DeploymentError(f'key "{key}" appears twice in one object: the second would silently win; keep one')
        result[key] = value
    return result


def _expand(raw: Mapping[str, Any], variables: Mapping[str, str] | None, source: Path | None) -> dict[str, Any]:
    """Return a deep copy of the manifest with `${NAME}` placeholders in string values replaced."""
    missing: dict[str, str] = {}  # placeholder name -> first place it appears

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            return {key: walk(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, str) and variables is not None:

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in variables:
                    return variables[name]
                missing.setdefault(name, where)
                return match.group(0)

            return _PLACEHOLDER.sub(substitute, value)
        return value

    expanded: dict[str, Any] = walk(raw, "")
    if missing:
        label = str(source) if source is not None else "deployment manifest"
        lines = [f"  ${{{name}}} (first at {where})" for name, where in missing.items()]
        example = " ".join(f"--var {name}=VALUE" for name in missing)
        raise DeploymentError(
            f"{label}: {len(missing)} placeholder(s) have no value:\n"
            + "\n".join(lines)
            + f"\npass them in `variables` (CLI: {example})"
        )
    if variables is not None:
        logger.debug("expanded %d variable(s) into %s", len(variables), source)
    return expanded


def _build(raw: dict[str, Any], source: Path | None) -> Deployment:
    """Assemble a Deployment from a manifest that passed the structural checks."""
    content = raw["modulesContent"]
    agent = content[AGENT][DESIRED]
    hub = content[HUB][DESIRED]
    modules = {}
    for name, spec in agent["modules"].items():
        settings = spec["settings"]
        env = {key: _env_text(entry["value"]) for key, entry in spec.get("env", {}).items()}
        modules[name] = ModuleSpec(
            name=name,
            image=settings["image"],
            status=spec["status"],
            restart_policy=spec["restartPolicy"],
            version=spec.get("version"),
            env=env,
            create_options=_create_options(settings)[0] or {},
        )
    routes = parse_routes(hub["routes"])
    ttl = hub["storeAndForwardConfiguration"]["timeToLiveSecs"]
    return Deployment(raw=raw, routes=routes, modules=modules, store_and_forward_ttl_s=ttl, source=source)


def _env_text(value: object) -> str:
    """Return an env value as the container sees it: text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _create_options(settings: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Return createOptions as an object (template or chunked-string form), or None and why not."""
    keys = sorted(key for key in settings if _CREATE_OPTIONS_KEY.fullmatch(key))
    if not keys:
        return {}, None
    first = settings.get("createOptions")
    if isinstance(first, Mapping):
        if len(keys) > 1:
            return None, "as an object cannot be continued in createOptions01...: merge them into one object"
        return dict(first), None
    if first is None:
        return None, f"is missing but {keys[0]} continues it"
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
        return None, f"must hold a JSON object, not {_kind(parsed)}"
    return parsed, None


def _kind(value: object) -> str:
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


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_deployment(
    deployment_or_path: Deployment | Mapping[str, Any] | str | Path,
    *,
    variables: Mapping[str, str] | None = None,
    endpoints: Mapping[str, ModuleEndpoints] = MODULES,
) -> list[Problem]:
    """Check a manifest offline and return every problem found (errors and warnings), never raising for content."""
    source: Path | None
    if isinstance(deployment_or_path, Deployment):
        raw: Mapping[str, Any] = deployment_or_path.raw
        source = deployment_or_path.source
    elif isinstance(deployment_or_path, Mapping):
        raw, source = deployment_or_path, None
    else:
        source = Path(deployment_or_path)
        try:
            raw = _read_json(source)
        except DeploymentError as exc:
            return [Problem("file", str(exc))]
    try:
        expanded = _expand(raw, variables, source)
    except DeploymentError as exc:
        return [Problem("variables", str(exc))]
    problems = _Checker(expanded, endpoints=endpoints).run()
    logger.debug(
        "validated %s: %d error(s), %d warning(s)",
        source or "deployment",
        sum(problem.severity == "error" for problem in problems),
        sum(problem.severity == "warning" for problem in problems),
    )
    return problems


class _Checker:
    """Walk one manifest and collect problems; `endpoints=None` checks the structure only."""

    def __init__(self, raw: Mapping[str, Any], endpoints: Mapping[str, ModuleEndpoints] | None) -> None:
        self.raw = raw
        self.endpoints = endpoints
        self.problems: list[Problem] = []
        self.modules: dict[str, Mapping[str, Any]] = {}
        self.routes: list[Route] = []
        self.hub_schema: str | None = None

    def error(self, where: str, message: str) -> None:
        """Record an error."""
        self.problems.append(Problem(where, message, "error"))

    def warning(self, where: str, message: str) -> None:
        """Record a warning."""
        self.problems.append(Problem(where, message, "warning"))

    def section(self, parent: Mapping[str, Any], key: str, where: str, fix: str) -> Mapping[str, Any] | None:
        """Return the object at parent[key], recording an error when it is missing or not an object."""
        if key not in parent:
            self.error(where, f'missing "{key}": {fix}')
            return None
        value = parent[key]
        if not isinstance(value, Mapping):
            self.error(where, f'"{key}" must be a JSON object, not {_kind(value)}')
            return None
        return value

    def one_of(self, spec: Mapping[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> str | None:
        """Check that spec[key] is present and one of `allowed`."""
        value = spec.get(key)
        if value is None:
            self.error(where, f'missing "{key}": set it to one of {", ".join(allowed)}')
            return None
        if value not in allowed:
            self.error(where, f'"{key}" is {json.dumps(value)}; it must be one of {", ".join(allowed)}')
            return None
        return str(value)

    def unknown_keys(self, spec: Mapping[str, Any], where: str, known: tuple[str, ...]) -> None:
        """Warn about keys the deployment schema does not define (usually a misspelling)."""
        for key in spec:
            if key not in known:
                self.warning(
                    where, f'"{key}" is not a key the deployment schema knows ({", ".join(known)}): check its spelling'
                )

    def run(self) -> list[Problem]:
        """Check the whole manifest."""
        raw = self.raw
        if "moduleContent" in raw and "modulesContent" not in raw:
            self.error("manifest", 'rename "moduleContent" to "modulesContent" (the key IoT Hub reads)')
            return self.problems
        self.unknown_keys(raw, "manifest", _TOP_LEVEL_KEYS)
        content = self.section(raw, "modulesContent", "manifest", 'add {"modulesContent": {"$edgeAgent": ..., ...}}')
        if content is None:
            return self.problems
        agent = self.desired(content, AGENT, "schemaVersion, runtime, systemModules and modules")
        hub = self.desired(content, HUB, "schemaVersion, routes and storeAndForwardConfiguration")
        if agent is not None:
            self.check_agent(agent)
        if hub is not None:
            self.check_hub(hub)
        self.check_twins(content)
        if self.endpoints is not None and agent is not None and hub is not None:
            self.check_routes_against_code(self.endpoints)
        return self.problems

    def desired(self, content: Mapping[str, Any], twin: str, needs: str) -> Mapping[str, Any] | None:
        """Return `<twin>.properties.desired`, recording an error when it is missing."""
        section = self.section(content, twin, "modulesContent", f'add "{twin}": {{"{DESIRED}": {{{needs}}}}}')
        if section is None:
            return None
        return self.section(section, DESIRED, twin, f"add it with {needs}")

    # -- $edgeAgent ----------------------------------------------------------------------------

    def check_agent(self, agent: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.properties.desired`."""
        self.unknown_keys(agent, AGENT, _AGENT_KEYS)
        self.one_of(agent, "schemaVersion", AGENT, AGENT_SCHEMA_VERSIONS)
        runtime = self.section(agent, "runtime", AGENT, 'add {"type": "docker", "settings": {"minDockerVersion": ...}}')
        if runtime is not None:
            self.check_runtime(runtime)
        system = self.section(agent, "systemModules", AGENT, "add edgeAgent and edgeHub")
        if system is not None:
            for name in system:
                if name not in _SYSTEM_MODULES:
                    self.error(
                        f"{AGENT}.systemModules",
                        f'"{name}" is not a system module (only edgeAgent, edgeHub): move it under "modules"',
                    )
            edge_agent = self.section(system, "edgeAgent", f"{AGENT}.systemModules", "add its type and settings.image")
            if edge_agent is not None:
                self.check_module_spec("system module edgeAgent", edge_agent, kind="edgeAgent")
            edge_hub = self.section(system, "edgeHub", f"{AGENT}.systemModules", "add its type, status and settings")
            if edge_hub is not None:
                self.check_module_spec("system module edgeHub", edge_hub, kind="edgeHub")
        modules = self.section(agent, "modules", AGENT, 'add "modules": {} (it may be empty)')
        if modules is not None:
            for name, spec in modules.items():
                where = f'module "{name}"'
                if not _MODULE_NAME.fullmatch(name):
                    self.error(where, "a module name may use only letters, digits, '_' and '-'; rename it")
                if not isinstance(spec, Mapping):
                    self.error(where, f"must be a JSON object, not {_kind(spec)}")
                    continue
                self.modules[name] = spec
                self.check_module_spec(where, spec, kind="module")

    def check_runtime(self, runtime: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.runtime`."""
        where = f"{AGENT}.runtime"
        self.unknown_keys(runtime, where, ("type", "settings"))
        self.one_of(runtime, "type", where, ("docker",))
        settings = self.section(runtime, "settings", where, 'add {"minDockerVersion": "v1.25"}')
        if settings is None:
            return
        self.unknown_keys(settings, f"{where}.settings", ("minDockerVersion", "loggingOptions", "registryCredentials"))
        if not isinstance(settings.get("minDockerVersion"), str):
            self.warning(f"{where}.settings", 'set "minDockerVersion" (e.g. "v1.25"): the runtime docs require it')
        if "loggingOptions" in settings and not isinstance(settings["loggingOptions"], str):
            self.error(f"{where}.settings", '"loggingOptions" must be a JSON string (stringified docker log options)')
        credentials = settings.get("registryCredentials")
        if credentials is None:
            return
        if not isinstance(credentials, Mapping):
            self.error(f"{where}.settings", '"registryCredentials" must be an object of {username, password, address}')
            return
        for registry, entry in credentials.items():
            missing = [
                key
                for key in ("username", "password", "address")
                if not isinstance(entry, Mapping) or not isinstance(entry.get(key), str)
            ]
            if missing:
                self.error(f'registry "{registry}"', f"set {', '.join(missing)} as strings")

    def check_module_spec(
        self, where: str, spec: Mapping[str, Any], *, kind: Literal["module", "edgeAgent", "edgeHub"]
    ) -> None:
        """Check one module entry: type, status, restart policy, settings, env."""
        if kind == "module":
            self.unknown_keys(spec, where, _MODULE_KEYS)
            if not isinstance(spec.get("version"), str):
                self.warning(where, 'set "version" to a string (e.g. "1.0"): IoT Edge uses it to spot module updates')
        self.one_of(spec, "type", where, ("docker",))
        if kind == "edgeHub":
            # The runtime docs fix both for edgeHub.
            self.one_of(spec, "status", where, ("running",))
            self.one_of(spec, "restartPolicy", where, ("always",))
        elif kind == "module":
            self.one_of(spec, "status", where, MODULE_STATUSES)
            policy = self.one_of(spec, "restartPolicy", where, RESTART_POLICIES)
            if policy in _UNIMPLEMENTED_RESTART_POLICIES:
                self.warning(where, f'IoT Edge accepts restartPolicy "{policy}" but only restarts for "always"; use it')
        if "imagePullPolicy" in spec and spec["imagePullPolicy"] not in IMAGE_PULL_POLICIES:
            self.error(where, f'"imagePullPolicy" must be one of {", ".join(IMAGE_PULL_POLICIES)}')
        if "startupOrder" in spec:
            order = spec["startupOrder"]
            if type(order) is not int or not 0 <= order <= MAX_STARTUP_ORDER:
                self.error(where, f'"startupOrder" must be an integer from 0 (first) to {MAX_STARTUP_ORDER}')
        settings = self.section(spec, "settings", where, 'add {"image": "<registry>/<name>:<tag>"}')
        if settings is not None:
            image = settings.get("image")
            if not isinstance(image, str) or not image.strip():
                self.error(where, 'set "settings.image" to the image URI (template: "${MODULES.<name>}")')
            for key in settings:
                if key != "image" and not _CREATE_OPTIONS_KEY.fullmatch(key):
                    self.error(where, f'"settings.{key}" is not a module setting (only image and createOptions)')
            self.check_create_options(where, settings)
        if "env" in spec:
            self.check_env(where, spec["env"])

    def check_create_options(self, where: str, settings: Mapping[str, Any]) -> None:
        """Check that createOptions is a JSON object small enough for IoT Edge's chunked twin value."""
        options, why = _create_options(settings)
        if options is None:
            self.error(where, f"createOptions {why}")
            return
        for key, chunk in settings.items():
            if _CREATE_OPTIONS_KEY.fullmatch(key) and isinstance(chunk, str) and len(chunk) > CREATE_OPTIONS_CHUNK:
                self.warning(
                    where, f"{key} is {len(chunk)} characters: IoT Edge tooling splits at {CREATE_OPTIONS_CHUNK}"
                )
        size = len(json.dumps(options, separators=(",", ":")))
        if size > CREATE_OPTIONS_MAX_CHARS:
            self.error(
                where,
                f"createOptions is {size} characters when serialised; IoT Edge takes at most "
                f"{CREATE_OPTIONS_MAX_CHUNKS} chunks of {CREATE_OPTIONS_CHUNK} ({CREATE_OPTIONS_MAX_CHARS}): "
                "move settings to env or the module twin",
            )

    def check_env(self, where: str, env: object) -> None:
        """Check `env`: {"NAME": {"value": <string|number|boolean>}}."""
        if not isinstance(env, Mapping):
            self.error(where, '"env" must be an object of {"NAME": {"value": "..."}}')
            return
        for name, entry in env.items():
            if not _ENV_NAME.fullmatch(name):
                self.error(where, f"env name {json.dumps(name)} may not contain '+', '#', '$', '.' or spaces")
            if not isinstance(entry, Mapping) or "value" not in entry:
                self.error(where, f'env "{name}" must be written {{"value": "..."}}')
                continue
            value = entry["value"]
            if isinstance(value, bool):
                self.warning(where, f'env "{name}" is a JSON boolean: write it as a string so its spelling is certain')
            elif not isinstance(value, str | int | float):
                self.error(where, f'env "{name}" value must be a string or number, not {_kind(value)}')
            extra = [key for key in entry if key != "value"]
            if extra:
                self.error(where, f'env "{name}" has unknown key(s) {", ".join(extra)} (only "value")')

    # -- $edgeHub ------------------------------------------------------------------------------

    def check_hub(self, hub: Mapping[str, Any]) -> None:
        """Check `$edgeHub.properties.desired` and parse its routes."""
        self.unknown_keys(hub, HUB, (*_HUB_KEYS, "mqttBroker"))
        self.hub_schema = self.one_of(hub, "schemaVersion", HUB, HUB_SCHEMA_VERSIONS)
        routes = self.section(hub, "routes", HUB, 'add "routes": {} (it may be empty)')
        if routes is not None:
            for name, spec in routes.items():
                self.check_route(name, spec)
        store = self.section(hub, "storeAndForwardConfiguration", HUB, 'add {"timeToLiveSecs": 7200}')
        if store is not None:
            ttl = store.get("timeToLiveSecs")
            if type(ttl) is not int or ttl <= 0:
                self.error(
                    f"{HUB}.storeAndForwardConfiguration",
                    f'"timeToLiveSecs" must be a positive integer of seconds (e.g. 7200), not {json.dumps(ttl)}',
                )

    def check_route(self, name: str, spec: object) -> None:
        """Parse one route with edgefleet.routes and record grammar errors under the route's name."""
        where = f'route "{name}"'
        if not _ROUTE_NAME.fullmatch(name):
            self.error(where, "a route name may not contain '.', '$', '#' or spaces; rename it")
        try:
            (route,) = parse_routes({name: spec})
        except RouteError as exc:
            at = "" if exc.position is None else f" at position {exc.position}"
            self.error(where, f"{exc.problem}{at}")
            return
        if isinstance(spec, Mapping) and self.hub_schema == "1.0":
            self.error(where, f'the object form (priority, timeToLiveSecs) needs {HUB} schemaVersion "1.1" or later')
        self.routes.append(route)

    # -- module twins --------------------------------------------------------------------------

    def check_twins(self, content: Mapping[str, Any]) -> None:
        """Check the desired properties of the custom modules' twins."""
        for name, twin in content.items():
            if name in (AGENT, HUB):
                continue
            where = f'twin "{name}"'
            if name not in self.modules:
                known = ", ".join(self.modules) or "none"
                self.error(where, f'no module "{name}" in {AGENT} modules (known: {known}); fix the name or add it')
            if not isinstance(twin, Mapping):
                self.error(where, f'must be {{"{DESIRED}": {{...}}}}, not {_kind(twin)}')
                continue
            for key in twin:
                if key != DESIRED:
                    self.error(where, f'"{key}" cannot be set by a deployment (only "{DESIRED}")')
            desired = self.section(twin, DESIRED, where, "add it, or remove the twin entry")
            if desired is None:
                continue
            self.check_twin_keys(where, desired, DESIRED)
            size = len(json.dumps(desired, separators=(",", ":")).encode("utf-8"))
            if size > MAX_DESIRED_BYTES:
                self.error(where, f"desired properties are {size} bytes; IoT Hub allows {MAX_DESIRED_BYTES}")

    def check_twin_keys(self, where: str, value: object, path: str) -> None:
        """Reject twin property names IoT Hub refuses (control characters, '.', '$', space)."""
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not key or _BAD_TWIN_KEY_CHAR.search(key):
                    self.error(
                        where, f"property {json.dumps(key)} at {path} may not contain '.', '$', spaces or controls"
                    )
                self.check_twin_keys(where, item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                self.check_twin_keys(where, item, path)

    # -- routes against modules and code -------------------------------------------------------

    def check_routes_against_code(self, endpoints: Mapping[str, ModuleEndpoints]) -> None:
        """Check that routes name deployed modules and the endpoints their code declares."""
        # `$body` conditions need JSON bodies; every edgefleet module sends application/json UTF-8
        # (docs/architecture.md), so they are allowed on any of our modules' outputs.
        known = ", ".join(self.modules) or "none"
        for route in self.routes:
            where = f'route "{route.name}"'
            source, sink = route.source, route.sink
            if source.module is not None:
                if source.module not in self.modules:
                    self.error(where, f'module "{source.module}" is not in {AGENT} modules (known: {known})')
                elif source.output is not None and source.module in endpoints:
                    declared = endpoints[source.module].outputs
                    if source.output not in declared:
                        self.error(
                            where,
                            f'module "{source.module}" declares no output "{source.output}" in edgefleet/endpoints.py '
                            f"(declared: {', '.join(declared) or 'none'}); fix the route or declare the output",
                        )
            if sink.kind == "module_input" and sink.module is not None:
                if sink.module not in self.modules:
                    self.error(where, f'module "{sink.module}" is not in {AGENT} modules (known: {known})')
                elif sink.module in endpoints:
                    declared = endpoints[sink.module].inputs
                    if sink.input not in declared:
                        self.error(
                            where,
                            f'module "{sink.module}" declares no input "{sink.input}" in edgefleet/endpoints.py '
                            f"(declared: {', '.join(declared) or 'none'}); fix the route or declare the input",
                        )
        self.check_unrouted_endpoints(endpoints)

    def check_unrouted_endpoints(self, endpoints: Mapping[str, ModuleEndpoints]) -> None:
        """Warn about declared outputs no route reads, inputs no route feeds, and undeclared modules."""
        referenced = referenced_endpoints(self.routes)
        every_output = any(route.source.kind in ("all", "messages", "modules") for route in self.routes)
        for name in self.modules:
            where = f'module "{name}"'
            declaration = endpoints.get(name)
            if declaration is None:
                self.warning(where, "has no declaration in edgefleet/endpoints.MODULES, so its routes go unchecked")
                continue
            module_wide = any(
                ref.direction == "output" and ref.module == name and ref.name is None for ref in referenced
            )
            for output in declaration.outputs:
                if not (
                    every_output
                    or module_wide
                    or any(
                        ref.direction == "output" and ref.module == name and ref.name == output for ref in referenced
                    )
                ):
                    self.warning(
                        where,
                        f'no route reads output "{output}", so edgeHub drops what the module sends there; add '
                        f"FROM /messages/modules/{name}/outputs/{output} INTO ... or remove it from endpoints.py",
                    )
            for module_input in declaration.inputs:
                if not any(
                    ref.direction == "input" and ref.module == name and ref.name == module_input for ref in referenced
                ):
                    self.warning(
                        where,
                        f'no route feeds input "{module_input}"; add a route INTO '
                        f'BrokeredEndpoint("/modules/{name}/inputs/{module_input}") or remove it from endpoints.py',
                    )
        for name in endpoints:
            if name not in self.modules:
                self.warning(
                    f'module "{name}"', f"is declared in edgefleet/endpoints.py but {AGENT} does not deploy it"
                )


# ---------------------------------------------------------------------------------------------
# CLI-facing
# ---------------------------------------------------------------------------------------------


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
