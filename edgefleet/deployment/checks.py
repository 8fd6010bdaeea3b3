"""The manifest's structure as the deployment schema defines it: walk the raw JSON and collect Problems.

Loading refuses a manifest with structural errors; `validate_deployment` reports them and then
checks the routes against the modules' code (edgefleet.deployment.validate).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.deployment.schema import (
    AGENT,
    AGENT_KEYS,
    AGENT_SCHEMA_VERSIONS,
    BAD_TWIN_KEY_CHAR,
    CREATE_OPTIONS_CHUNK,
    CREATE_OPTIONS_KEY,
    CREATE_OPTIONS_MAX_CHARS,
    CREATE_OPTIONS_MAX_CHUNKS,
    DESIRED,
    ENV_NAME,
    HUB,
    HUB_KEYS,
    HUB_SCHEMA_VERSIONS,
    IMAGE_PULL_POLICIES,
    MAX_DESIRED_BYTES,
    MAX_STARTUP_ORDER,
    MODULE_KEYS,
    MODULE_NAME,
    MODULE_STATUSES,
    REGISTRY_CREDENTIAL_KEYS,
    RESTART_POLICIES,
    ROUTE_NAME,
    RUNTIME_KEYS,
    RUNTIME_SETTINGS_KEYS,
    SYSTEM_MODULES,
    TOP_LEVEL_KEYS,
    UNIMPLEMENTED_RESTART_POLICIES,
    decode_create_options,
    json_kind,
)
from edgefleet.routes import Route, RouteError, parse_routes

__all__ = ["Findings", "Problem", "Severity", "Structure", "check_structure"]

# edgeHub's lexer skips /* ... */ anywhere in a route, even one opened by a source's "/*".
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)

Severity = Literal["error", "warning"]
ModuleKind = Literal["module", "edgeAgent", "edgeHub"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of the validator; `where` names the route, module or manifest section."""

    where: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Structure:
    """What the structural walk found: its problems, and the modules and routes it could read."""

    problems: list[Problem]
    modules: tuple[str, ...]  # custom modules under $edgeAgent, in manifest order
    routes: tuple[Route, ...]  # the routes that parsed
    has_agent_and_hub: bool  # both desired-property sections exist, so cross-checks make sense


def check_structure(raw: Mapping[str, Any]) -> Structure:
    """Walk one manifest and return every structural problem with the modules and routes it names."""
    checker = _Checker()
    has_agent_and_hub = checker.run(raw)
    return Structure(checker.problems, tuple(checker.modules), tuple(checker.routes), has_agent_and_hub)


class Findings:
    """Collect problems in the order they are found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, where: str, message: str) -> None:
        """Record an error."""
        self.problems.append(Problem(where, message, "error"))

    def warning(self, where: str, message: str) -> None:
        """Record a warning."""
        self.problems.append(Problem(where, message, "warning"))


class _Checker(Findings):
    """Walk one manifest section by section, remembering the modules and routes it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.modules: dict[str, Mapping[str, Any]] = {}
        self.routes: list[Route] = []
        self.hub_schema: str | None = None

    def run(self, raw: Mapping[str, Any]) -> bool:
        """Check the whole manifest; return whether both $edgeAgent and $edgeHub desired properties exist."""
        if "moduleContent" in raw and "modulesContent" not in raw:
            self.error("manifest", 'rename "moduleContent" to "modulesContent" (the key IoT Hub reads)')
            return False
        self.unknown_keys(raw, "manifest", TOP_LEVEL_KEYS)
        content = self.section(raw, "modulesContent", "manifest", 'add {"modulesContent": {"$edgeAgent": ..., ...}}')
        if content is None:
            return False
        agent = self.desired(content, AGENT, "schemaVersion, runtime, systemModules and modules")
        hub = self.desired(content, HUB, "schemaVersion, routes and storeAndForwardConfiguration")
        if agent is not None:
            self.check_agent(agent)
        if hub is not None:
            self.check_hub(hub)
        self.check_twins(content)
        return agent is not None and hub is not None

    # -- shared checks -------------------------------------------------------------------------

    def section(self, parent: Mapping[str, Any], key: str, where: str, fix: str) -> Mapping[str, Any] | None:
        """Return the object at parent[key], recording an error when it is missing or not an object."""
        if key not in parent:
            self.error(where, f'missing "{key}": {fix}')
            return None
        value = parent[key]
        if not isinstance(value, Mapping):
            self.error(where, f'"{key}" must be a JSON object, not {json_kind(value)}')
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

    def desired(self, content: Mapping[str, Any], twin: str, needs: str) -> Mapping[str, Any] | None:
        """Return `<twin>.properties.desired`, recording an error when it is missing."""
        section = self.section(content, twin, "modulesContent", f'add "{twin}": {{"{DESIRED}": {{{needs}}}}}')
        if section is None:
            return None
        return self.section(section, DESIRED, twin, f"add it with {needs}")

    # -- $edgeAgent ----------------------------------------------------------------------------

    def check_agent(self, agent: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.properties.desired`."""
        self.unknown_keys(agent, AGENT, AGENT_KEYS)
        self.one_of(agent, "schemaVersion", AGENT, AGENT_SCHEMA_VERSIONS)
        runtime = self.section(agent, "runtime", AGENT, 'add {"type": "docker", "settings": {"minDockerVersion": ...}}')
        if runtime is not None:
            self.check_runtime(runtime)
        system = self.section(agent, "systemModules", AGENT, "add edgeAgent and edgeHub")
        if system is not None:
            self.check_system_modules(system)
        modules = self.section(agent, "modules", AGENT, 'add "modules": {} (it may be empty)')
        if modules is not None:
            self.check_custom_modules(modules)

    def check_runtime(self, runtime: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.runtime`."""
        where = f"{AGENT}.runtime"
        self.unknown_keys(runtime, where, RUNTIME_KEYS)
        self.one_of(runtime, "type", where, ("docker",))
        settings = self.section(runtime, "settings", where, 'add {"minDockerVersion": "v1.25"}')
        if settings is not None:
            self.check_runtime_settings(f"{where}.settings", settings)

    def check_runtime_settings(self, where: str, settings: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.runtime.settings`: Docker version, logging options, registry credentials."""
        self.unknown_keys(settings, where, RUNTIME_SETTINGS_KEYS)
        if not isinstance(settings.get("minDockerVersion"), str):
            self.warning(where, 'set "minDockerVersion" (e.g. "v1.25"): the runtime docs require it')
        if "loggingOptions" in settings and not isinstance(settings["loggingOptions"], str):
            self.error(where, '"loggingOptions" must be a JSON string (stringified docker log options)')
        credentials = settings.get("registryCredentials")
        if credentials is not None:
            self.check_registry_credentials(where, credentials)

    def check_registry_credentials(self, where: str, credentials: object) -> None:
        """Check that every registry entry has username, password and address as strings."""
        if not isinstance(credentials, Mapping):
            self.error(where, '"registryCredentials" must be an object of {username, password, address}')
            return
        for registry, entry in credentials.items():
            missing = [
                key
                for key in REGISTRY_CREDENTIAL_KEYS
                if not isinstance(entry, Mapping) or not isinstance(entry.get(key), str)
            ]
            if missing:
                self.error(f'registry "{registry}"', f"set {', '.join(missing)} as strings")

    def check_system_modules(self, system: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.systemModules`: exactly edgeAgent and edgeHub."""
        where = f"{AGENT}.systemModules"
        for name in system:
            if name not in SYSTEM_MODULES:
                self.error(where, f'"{name}" is not a system module (only edgeAgent, edgeHub): move it under "modules"')
        edge_agent = self.section(system, "edgeAgent", where, "add its type and settings.image")
        if edge_agent is not None:
            self.check_module_spec("system module edgeAgent", edge_agent, kind="edgeAgent")
        edge_hub = self.section(system, "edgeHub", where, "add its type, status and settings")
        if edge_hub is not None:
            self.check_module_spec("system module edgeHub", edge_hub, kind="edgeHub")

    def check_custom_modules(self, modules: Mapping[str, Any]) -> None:
        """Check `$edgeAgent.modules` and remember each module read."""
        for name, spec in modules.items():
            where = f'module "{name}"'
            if not MODULE_NAME.fullmatch(name):
                self.error(where, "a module name may use only letters, digits, '_' and '-'; rename it")
            if not isinstance(spec, Mapping):
                self.error(where, f"must be a JSON object, not {json_kind(spec)}")
                continue
            self.modules[name] = spec
            self.check_module_spec(where, spec, kind="module")

    def check_module_spec(self, where: str, spec: Mapping[str, Any], *, kind: ModuleKind) -> None:
        """Check one module entry: type, status, restart policy, settings, env."""
        if kind == "module":
            self.check_module_keys(where, spec)
        self.one_of(spec, "type", where, ("docker",))
        self.check_lifecycle(where, spec, kind)
        self.check_pull_and_startup(where, spec)
        settings = self.section(spec, "settings", where, 'add {"image": "<registry>/<name>:<tag>"}')
        if settings is not None:
            self.check_module_settings(where, settings)
        if "env" in spec:
            self.check_env(where, spec["env"])

    def check_module_keys(self, where: str, spec: Mapping[str, Any]) -> None:
        """Warn about unknown keys and a missing version on a custom module."""
        self.unknown_keys(spec, where, MODULE_KEYS)
        if not isinstance(spec.get("version"), str):
            self.warning(where, 'set "version" to a string (e.g. "1.0"): IoT Edge uses it to spot module updates')

    def check_lifecycle(self, where: str, spec: Mapping[str, Any], kind: ModuleKind) -> None:
        """Check status and restartPolicy (edgeAgent sets neither; the runtime docs fix both for edgeHub)."""
        if kind == "edgeHub":
            self.one_of(spec, "status", where, ("running",))
            self.one_of(spec, "restartPolicy", where, ("always",))
        elif kind == "module":
            self.one_of(spec, "status", where, MODULE_STATUSES)
            policy = self.one_of(spec, "restartPolicy", where, RESTART_POLICIES)
            if policy in UNIMPLEMENTED_RESTART_POLICIES:
                self.warning(where, f'IoT Edge accepts restartPolicy "{policy}" but only restarts for "always"; use it')

    def check_pull_and_startup(self, where: str, spec: Mapping[str, Any]) -> None:
        """Check the optional imagePullPolicy and startupOrder."""
        if "imagePullPolicy" in spec and spec["imagePullPolicy"] not in IMAGE_PULL_POLICIES:
            self.error(where, f'"imagePullPolicy" must be one of {", ".join(IMAGE_PULL_POLICIES)}')
        if "startupOrder" in spec:
            order = spec["startupOrder"]
            if type(order) is not int or not 0 <= order <= MAX_STARTUP_ORDER:
                self.error(where, f'"startupOrder" must be an integer from 0 (first) to {MAX_STARTUP_ORDER}')

    def check_module_settings(self, where: str, settings: Mapping[str, Any]) -> None:
        """Check a module's settings: an image URI, and createOptions as its only other key."""
        image = settings.get("image")
        if not isinstance(image, str) or not image.strip():
            self.error(where, 'set "settings.image" to the image URI (template: "${MODULES.<name>}")')
        for key in settings:
            if key != "image" and not CREATE_OPTIONS_KEY.fullmatch(key):
                self.error(where, f'"settings.{key}" is not a module setting (only image and createOptions)')
        self.check_create_options(where, settings)

    def check_create_options(self, where: str, settings: Mapping[str, Any]) -> None:
        """Check that createOptions is a JSON object small enough for IoT Edge's chunked twin value."""
        options, why = decode_create_options(settings)
        if options is None:
            self.error(where, f"createOptions {why}")
            return
        for key, chunk in settings.items():
            if CREATE_OPTIONS_KEY.fullmatch(key) and isinstance(chunk, str) and len(chunk) > CREATE_OPTIONS_CHUNK:
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
            if not ENV_NAME.fullmatch(name):
                self.error(where, f"env name {json.dumps(name)} may not contain '+', '#', '$', '.' or spaces")
            if not isinstance(entry, Mapping) or "value" not in entry:
                self.error(where, f'env "{name}" must be written {{"value": "..."}}')
                continue
            self.check_env_entry(where, name, entry)

    def check_env_entry(self, where: str, name: str, entry: Mapping[str, Any]) -> None:
        """Check one env entry's value type and that "value" is its only key."""
        value = entry["value"]
        if isinstance(value, bool):
            self.warning(where, f'env "{name}" is a JSON boolean: write it as a string so its spelling is certain')
        elif not isinstance(value, str | int | float):
            self.error(where, f'env "{name}" value must be a string or number, not {json_kind(value)}')
        extra = [key for key in entry if key != "value"]
        if extra:
            self.error(where, f'env "{name}" has unknown key(s) {", ".join(extra)} (only "value")')

    # -- $edgeHub ------------------------------------------------------------------------------

    def check_hub(self, hub: Mapping[str, Any]) -> None:
        """Check `$edgeHub.properties.desired` and parse its routes."""
        self.unknown_keys(hub, HUB, (*HUB_KEYS, "mqttBroker"))
        self.hub_schema = self.one_of(hub, "schemaVersion", HUB, HUB_SCHEMA_VERSIONS)
        routes = self.section(hub, "routes", HUB, 'add "routes": {} (it may be empty)')
        if routes is not None:
            for name, spec in routes.items():
                self.check_route(name, spec)
        store = self.section(hub, "storeAndForwardConfiguration", HUB, 'add {"timeToLiveSecs": 7200}')
        if store is not None:
            self.check_store_and_forward(store)

    def check_route(self, name: str, spec: object) -> None:
        """Parse one route with edgefleet.routes and record grammar errors under the route's name."""
        where = f'route "{name}"'
        if not ROUTE_NAME.fullmatch(name):
            self.error(where, "a route name may not contain '.', '$', '#' or spaces; rename it")
        try:
            (route,) = parse_routes({name: spec})
        except RouteError as exc:
            at = "" if exc.position is None else f" at position {exc.position}"
            self.error(where, f"{exc.problem}{at}")
            return
        if isinstance(spec, Mapping) and self.hub_schema == "1.0":
            self.error(where, f'the object form (priority, timeToLiveSecs) needs {HUB} schemaVersion "1.1" or later')
        self.check_route_semantics(where, route)
        self.routes.append(route)

    def check_route_semantics(self, where: str, route: Route) -> None:
        """Report what edgeHub accepts without complaint but then silently gets wrong."""
        comment = _COMMENT.search(route.text)
        if comment is not None:
            self.warning(
                where,
                f"edgeHub reads {comment.group()!r} as a comment (a '/*' in a source path opens one too); "
                "remove it if it hides part of the route",
            )
        if route.ignored:
            self.error(
                where,
                f"edgeHub ignores everything after the sink ({route.ignored!r}), so it never applies; "
                "put WHERE <condition> before INTO",
            )
        if route.source.kind == "other":
            self.error(
                where,
                f"edgeHub accepts the source {route.source.path!r} but no message ever comes from it; use "
                "/messages/*, /messages/modules/<module>[/outputs/<output>] or /twinChangeNotifications",
            )
        if route.sink.kind == "module_input" and tuple(label.lower() for label in route.sink.labels) != (
            "modules",
            "inputs",
        ):
            self.warning(
                where,
                f"edgeHub reads BrokeredEndpoint addresses as /<any>/<module>/<any>/<input>; write "
                f'"/modules/{route.sink.module}/inputs/{route.sink.input}"',
            )

    def check_store_and_forward(self, store: Mapping[str, Any]) -> None:
        """Check that messages are kept a positive number of seconds while upstream is away."""
        ttl = store.get("timeToLiveSecs")
        if type(ttl) is not int or ttl <= 0:
            self.error(
                f"{HUB}.storeAndForwardConfiguration",
                f'"timeToLiveSecs" must be a positive integer of seconds (e.g. 7200), not {json.dumps(ttl)}',
            )

    # -- module twins --------------------------------------------------------------------------

    def check_twins(self, content: Mapping[str, Any]) -> None:
        """Check the desired properties of the custom modules' twins."""
        for name, twin in content.items():
            if name not in (AGENT, HUB):
                self.check_twin(name, twin)

    def check_twin(self, name: str, twin: object) -> None:
        """Check one module twin: a deployed module, only desired properties, names and size IoT Hub takes."""
        where = f'twin "{name}"'
        if name not in self.modules:
            known = ", ".join(self.modules) or "none"
            self.error(where, f'no module "{name}" in {AGENT} modules (known: {known}); fix the name or add it')
        if not isinstance(twin, Mapping):
            self.error(where, f'must be {{"{DESIRED}": {{...}}}}, not {json_kind(twin)}')
            return
        for key in twin:
            if key != DESIRED:
                self.error(where, f'"{key}" cannot be set by a deployment (only "{DESIRED}")')
        desired = self.section(twin, DESIRED, where, "add it, or remove the twin entry")
        if desired is None:
            return
        self.check_twin_keys(where, desired, DESIRED)
        size = len(json.dumps(desired, separators=(",", ":")).encode("utf-8"))
        if size > MAX_DESIRED_BYTES:
            self.error(where, f"desired properties are {size} bytes; IoT Hub allows {MAX_DESIRED_BYTES}")

    def check_twin_keys(self, where: str, value: object, path: str) -> None:
        """Reject twin property names IoT Hub refuses (control characters, '.', '$', space)."""
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not key or BAD_TWIN_KEY_CHAR.search(key):
                    self.error(
                        where, f"property {json.dumps(key)} at {path} may not contain '.', '$', spaces or controls"
                    )
                self.check_twin_keys(where, item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                self.check_twin_keys(where, item, path)
