"""Translate a deployed IoT Edge manifest into a docker-compose file that runs exactly its modules.

`edgefleet manifest compose` reads the manifest `edgefleet manifest build` writes and returns a
compose file (format 2.4, docker-compose 1.29 and Compose v2) that starts each module the way the
IoT Edge runtime would: its image, its `env`, its createOptions (re-joined from the 512-character
chunks) — binds, port bindings, memory limits — its restart policy, its status and startup order.
Modules share one network (`azure-iot-edge`, as on a device) where each one is reached by its
module name. What the manifest leaves to Azure is added around them: the offline edgeHub stand-in
(fed the manifest itself, so its routes are the manifest's) and the sink standing in for IoT Hub,
whose broker takes the stand-in by its password (`<secrets>/hub/`, as `edgefleet compose secrets` writes it).

Modules that talk to edgeHub reach the stand-in as in deployment/docker-compose.yml: one internal
network per module where the stand-in has a fixed address (its per-module broker; twin topics name
no module), the SDK's development variables naming that address, and the stand-in's CA from the
`edgehub-ca` volume, mounted read-only.

The translation is pure: a manifest (a dict) and options in, a compose document (a dict) out.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from edgefleet import __version__
from edgefleet.deployment import Deployment, ModuleSpec, parse_deployment
from edgefleet.endpoints import MODULES
from edgefleet.errors import EdgefleetError
from edgefleet.hub_wire import HUB_PUBLISHER_USER
from edgefleet_cli.compose_secrets import HUB_DIR, KEYS_FILE, key_variable
from edgehub.hub_auth import USERS_FILE
from edgehub.hub_auth import client_password_file as hub_client_password_file

__all__ = [
    "EDGEHUB_SERVICE",
    "EDGE_NETWORK",
    "SINK_SERVICE",
    "ComposeOptions",
    "ManifestComposeError",
    "edgehub_module_env",
    "manifest_to_compose",
    "parse_host_paths",
    "parse_port_overrides",
    "write_compose",
]

EDGEHUB_SERVICE: Final = "edgehub"
SINK_SERVICE: Final = "sink"
EDGE_NETWORK: Final = "azure-iot-edge"  # the network the IoT Edge runtime puts every module on
HUB_NETWORK: Final = "hub"
EDGEHUB_CA_VOLUME: Final = "edgehub-ca"
SYSTEM_VOLUMES: Final = ("edgehub-state", EDGEHUB_CA_VOLUME, "lake", "sink-state")
# Where the stand-in's CA certificate appears in a module (as in deployment/docker-compose.yml).
MODULE_CA_DIR: Final = "/run/edgehub"
MANIFEST_IN_STANDIN: Final = "/etc/edgefleet/deployment.json"
MODULE_KEYS_IN_STANDIN: Final = "/run/secrets/module-keys"
# The hub broker's logins (edgehub.hub_auth, from `edgefleet compose secrets`): each service mounts its own file only.
HUB_USERS_IN_SINK: Final = "/run/secrets/hub/passwords"
HUB_PASSWORD_IN_STANDIN: Final = "/run/secrets/hub/password"
HUB_HOSTNAME: Final = "edgefleet-local.azure-devices.net"
SINK_PORT: Final = 1883
# IoT Edge restart policies; on-unhealthy has no compose equivalent: our modules exit when unhealthy too long.
RESTART: Final = {"always": "always", "on-failure": "on-failure", "on-unhealthy": "always", "never": "no"}
# createOptions this translation understands; anything else is refused rather than silently dropped.
_CONTAINER_KEYS: Final = ("Cmd", "Entrypoint", "Env", "User", "WorkingDir", "Labels", "ExposedPorts", "HostConfig")
_HOST_CONFIG_KEYS: Final = (
    "Binds",
    "PortBindings",
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "Privileged",
    "CapAdd",
    "CapDrop",
    "ExtraHosts",
    "ReadonlyRootfs",
    "LogConfig",
)
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Docker's named-volume pattern
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
# The system services check health every 5 s (the images say 15 s) so that `up` turns healthy sooner.
_SYSTEM_HEALTHCHECK: Final = {
    "test": ["CMD", "python", "-m", "edgefleet.health", "/tmp/healthy", "45"],
    "interval": "5s",
    "timeout": "5s",
    "retries": 3,
    "start_period": "60s",
}


class ManifestComposeError(EdgefleetError):
    """Raise when a manifest (or an option) cannot be translated; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ComposeOptions:
    """How to run the manifest locally: where host paths are, which host ports, which system images."""

    # The manifest file as compose should mount it into the stand-in (absolute).
    manifest_path: Path
    # Host path prefix in the manifest's binds -> the local directory to use instead.
    host_paths: Mapping[str, str] = field(default_factory=dict)
    # Host port in the manifest's port bindings -> the host port to publish instead (0: any free port).
    ports: Mapping[int, int] = field(default_factory=dict)
    # Where published ports listen when the manifest names no HostIp.
    publish_address: str = "127.0.0.1"
    # The first two octets of the compose networks' /24 subnets.
    subnet: str = "172.28"
    edge_device: str = "edge1"
    standin_image: str = f"edgefleet-edgehub:{__version__}"
    sink_image: str = f"edgefleet-sink:{__version__}"
    lake_flush_every_s: float = 5.0
    # Where `edgefleet compose secrets` put the module keys (`module-keys`, for the stand-in); the
    # modules read theirs from EDGEFLEET_<MODULE>_KEY in compose's environment.
    secrets_dir: Path = field(default_factory=lambda: Path("deployment/secrets").resolve())


def edgehub_module_env(module: str, gateway_host: str, edge_device: str) -> dict[str, str]:
    """Return the SDK's development variables that point a module at its stand-in broker.

    The same as deployment/docker-compose.yml: the connection string names the module's stand-in
    address, and the key comes from compose's environment (`edgefleet compose secrets` writes it).
    """
    connection = ";".join(
        [
            f"HostName={HUB_HOSTNAME}",
            f"GatewayHostName={gateway_host}",
            f"DeviceId={edge_device}",
            f"ModuleId={module}",
            f"SharedAccessKey=${{{key_variable(module)}:?run edgefleet compose secrets}}",
        ]
    )
    return {"EdgeHubConnectionString": connection, "EdgeModuleCACertificateFile": f"{MODULE_CA_DIR}/ca.pem"}


def parse_host_paths(pairs: Iterable[str]) -> dict[str, str]:
    """Parse `SRC=DST` host path remaps (`/etc/edgefleet/field=/tmp/field`); both must be absolute."""
    remaps: dict[str, str] = {}
    for pair in pairs:
        source, sep, dest = pair.partition("=")
        if not sep or not source.startswith("/") or not dest.startswith("/"):
            raise ManifestComposeError(
                f"--host-path {pair!r}: write it as SRC=DST with two absolute paths, e.g. "
                "--host-path /etc/edgefleet/field=/srv/edgefleet/field"
            )
        remaps[source.rstrip("/") or "/"] = dest.rstrip("/") or "/"
    return remaps


def parse_port_overrides(pairs: Iterable[str]) -> dict[int, int]:
    """Parse `MANIFEST_PORT=HOST_PORT` overrides (`8884=0`: any free host port)."""
    overrides: dict[int, int] = {}
    for pair in pairs:
        source, _, dest = pair.partition("=")
        if not (source.isdigit() and dest.isdigit() and 0 < int(source) < 65536 and int(dest) < 65536):
            raise ManifestComposeError(
                f"--port {pair!r}: write it as MANIFEST_HOST_PORT=HOST_PORT, e.g. --port 8884=18884 "
                "(0 picks a free port)"
            )
        overrides[int(source)] = int(dest)
    return overrides


def manifest_to_compose(manifest: Mapping[str, Any], options: ComposeOptions) -> dict[str, Any]:
    """Return a compose document that runs the deployed manifest's modules as the IoT Edge runtime would."""
    deployment = _deployed(manifest)
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    raw_modules: Mapping[str, Any] = agent["modules"]
    for reserved in (EDGEHUB_SERVICE, SINK_SERVICE):
        if reserved in deployment.modules:
            raise ManifestComposeError(
                f'module "{reserved}" has the name of a service the translation adds; rename the module'
            )
    subnets = _Subnets(options.subnet)
    clients = [name for name in deployment.modules if _talks_to_edgehub(name)]
    standin_hosts = {module: subnets.standin_host(index) for index, module in enumerate(clients)}
    edgehub_spec = agent["systemModules"]["edgeHub"]
    order = {name: int(raw_modules[name].get("startupOrder", 0)) for name in deployment.modules}
    order[EDGEHUB_SERVICE] = int(edgehub_spec.get("startupOrder", 0))

    named_volumes: dict[str, dict[str, Any]] = {}
    used_remaps: set[str] = set()
    used_ports: set[int] = set()
    services: dict[str, Any] = {
        SINK_SERVICE: _sink_service(options),
        EDGEHUB_SERVICE: _standin_service(options, standin_hosts, edgehub_spec.get("restartPolicy", "always")),
    }
    for name in sorted(deployment.modules, key=lambda module: (order[module], module)):
        spec = deployment.modules[name]
        service = _module_service(spec, options, named_volumes, used_remaps, used_ports)
        if name in standin_hosts:
            environment = service.get("environment", {})
            service["environment"] = _client_environment(spec, environment, standin_hosts[name], options)
            service["volumes"].insert(0, f"{EDGEHUB_CA_VOLUME}:{MODULE_CA_DIR}:ro")
            service["networks"][f"edgehub-{name}"] = {}
        if spec.status == "stopped":
            service["scale"] = 0  # deployed, not started: IoT Edge leaves a stopped module's container down
        else:
            depends = _depends_on(name, order, deployment, name in standin_hosts)
            if depends:
                service["depends_on"] = depends
        services[name] = service
    _check_all_used("--host-path", set(options.host_paths) - used_remaps, "no bind of the manifest is under")
    _check_all_used("--port", {str(p) for p in set(options.ports) - used_ports}, "no port binding publishes host port")

    clashes = sorted(set(named_volumes) & set(SYSTEM_VOLUMES))
    if clashes:
        raise ManifestComposeError(
            f"the manifest's named volume(s) {', '.join(clashes)} clash with the stand-in's or the sink's; rename them"
        )
    networks: dict[str, Any] = {
        EDGE_NETWORK: {"ipam": {"config": [{"subnet": subnets.network(0)}]}},
        HUB_NETWORK: {"internal": True, "ipam": {"config": [{"subnet": subnets.network(1)}]}},
    }
    for index, module in enumerate(clients):
        networks[f"edgehub-{module}"] = {"internal": True, "ipam": {"config": [{"subnet": subnets.module(index)}]}}
    volumes: dict[str, Any] = {name: {} for name in SYSTEM_VOLUMES}
    volumes.update(named_volumes)
    return {"version": "2.4", "services": services, "volumes": volumes, "networks": networks}


def write_compose(compose: Mapping[str, Any], out_path: Path, *, source: Path) -> Path:
    """Write the compose document as YAML, atomically, under a header naming the manifest it comes from."""
    import yaml

    header = (
        f"# Generated by `edgefleet manifest compose` from {source}: regenerate it, do not edit it.\n"
        "# Runs exactly the manifest's modules, plus the edgeHub stand-in (fed that manifest) and the sink.\n"
        f"#   docker-compose -f {out_path.name} up -d\n"
        f"#   docker-compose -f {out_path.name} down -v   # removes containers, networks and volumes\n"
    )
    text = header + yaml.safe_dump(dict(compose), sort_keys=False, default_flow_style=False, width=1000)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path


def _deployed(manifest: Mapping[str, Any]) -> Deployment:
    """Parse the manifest, refusing a template whose placeholders were never filled in."""
    deployment = parse_deployment(manifest)
    for spec in deployment.modules.values():
        unexpanded = _PLACEHOLDER.findall(spec.image + json.dumps(spec.env))
        if unexpanded:
            raise ManifestComposeError(
                f'module "{spec.name}" still has {unexpanded[0]}: translate the manifest `edgefleet manifest build` '
                "writes (out/deployment.json), not the template"
            )
    return deployment


def _talks_to_edgehub(module: str) -> bool:
    """Return False only for modules endpoints.py declares as never connecting to edgeHub (as the stand-in does)."""
    return module not in MODULES or MODULES[module].edgehub_client


def _module_service(
    spec: ModuleSpec,
    options: ComposeOptions,
    named_volumes: dict[str, dict[str, Any]],
    used_remaps: set[str],
    used_ports: set[int],
) -> dict[str, Any]:
    """Return one module's service: image, env, createOptions, restart policy, the edge network."""
    create = spec.create_options
    where = f'module "{spec.name}" createOptions'
    _refuse_unknown(create, _CONTAINER_KEYS, where)
    host = create.get("HostConfig") or {}
    _refuse_unknown(host, _HOST_CONFIG_KEYS, f"{where}.HostConfig")
    environment = dict(_env_list(create.get("Env") or [], where))
    environment.update(spec.env)  # the manifest's env wins over createOptions.Env, as on IoT Edge
    service: dict[str, Any] = {
        "image": _literal(spec.image),
        "restart": RESTART[spec.restart_policy],
        "environment": {key: _literal(value) for key, value in environment.items()},
        "volumes": [],
        "networks": {EDGE_NETWORK: {}},
    }
    for key, compose_key in (("Cmd", "command"), ("Entrypoint", "entrypoint")):
        if key in create:
            value = create[key]
            service[compose_key] = _literal(value) if isinstance(value, str) else [_literal(str(v)) for v in value]
    if "User" in create:
        service["user"] = _literal(str(create["User"]))
    if "WorkingDir" in create:
        service["working_dir"] = _literal(str(create["WorkingDir"]))
    if "Labels" in create:
        service["labels"] = {key: _literal(str(value)) for key, value in create["Labels"].items()}
    if "ExposedPorts" in create:
        service["expose"] = sorted(create["ExposedPorts"])
    for bind in host.get("Binds") or []:
        service["volumes"].append(_bind(str(bind), spec.name, options.host_paths, named_volumes, used_remaps))
    ports = _ports(host.get("PortBindings") or {}, spec.name, options, used_ports)
    if ports:
        service["ports"] = ports
    limits = {"Memory": "mem_limit", "MemorySwap": "memswap_limit"}
    for key, compose_key in limits.items():
        if key in host:
            service[compose_key] = int(host[key])
    if "NanoCpus" in host:
        service["cpus"] = int(host["NanoCpus"]) / 1e9
    for key, compose_key in (("Privileged", "privileged"), ("ReadonlyRootfs", "read_only")):
        if key in host:
            service[compose_key] = bool(host[key])
    for key, compose_key in (("CapAdd", "cap_add"), ("CapDrop", "cap_drop"), ("ExtraHosts", "extra_hosts")):
        if key in host:
            service[compose_key] = [_literal(str(value)) for value in host[key]]
    if "LogConfig" in host:
        log = host["LogConfig"]
        service["logging"] = {"driver": log.get("Type", "json-file"), "options": dict(log.get("Config") or {})}
    if not service["environment"]:
        del service["environment"]
    return service


def _client_environment(
    spec: ModuleSpec, environment: dict[str, str], standin_host: str, options: ComposeOptions
) -> dict[str, str]:
    """Return the module's env with the stand-in's variables added; the manifest may not set them itself."""
    extra = edgehub_module_env(spec.name, standin_host, options.edge_device)
    taken = sorted(set(extra) & set(environment))
    if taken:
        raise ManifestComposeError(
            f'module "{spec.name}" sets {", ".join(taken)} in its env; the runtime (here the stand-in) sets it: drop it'
        )
    return {**environment, **extra}


def _depends_on(module: str, order: Mapping[str, int], deployment: Deployment, client: bool) -> dict[str, Any]:
    """Return depends_on: what starts earlier by startupOrder; the stand-in healthy for its clients."""
    depends: dict[str, Any] = {}
    if client:
        # the stand-in must have published its CA and started the module's broker first
        depends[EDGEHUB_SERVICE] = {"condition": "service_healthy"}
    for other, rank in sorted(order.items(), key=lambda item: (item[1], item[0])):
        if other == module or rank >= order[module] or other in depends:
            continue
        if other in deployment.modules and deployment.modules[other].status == "stopped":
            continue
        # IoT Edge starts lower startupOrder first but does not wait for it to be ready
        depends[other] = {"condition": "service_started"}
    return depends


def _bind(
    bind: str,
    module: str,
    host_paths: Mapping[str, str],
    named_volumes: dict[str, dict[str, Any]],
    used_remaps: set[str],
) -> str:
    """Return a Docker bind (`SRC:DST[:MODE]`) as a compose volume, a named source declared, a host path remapped."""
    parts = bind.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise ManifestComposeError(
            f'module "{module}": bind {bind!r} is not SOURCE:/container/path[:MODE] (Docker\'s HostConfig.Binds)'
        )
    source = parts[0]
    if source.startswith("/"):
        parts[0] = _remap(source, host_paths, used_remaps)
    elif _VOLUME_NAME.fullmatch(source):
        named_volumes.setdefault(source, {})
    else:
        raise ManifestComposeError(
            f'module "{module}": bind source {source!r} is neither an absolute host path nor a volume name'
        )
    return _literal(":".join(parts))


def _remap(path: str, host_paths: Mapping[str, str], used: set[str]) -> str:
    """Return the host path with its longest remapped prefix replaced (whole path components only)."""
    pure = PurePosixPath(path)
    for prefix in sorted(host_paths, key=len, reverse=True):
        base = PurePosixPath(prefix)
        if pure == base or base in pure.parents:
            used.add(prefix)
            return str(PurePosixPath(host_paths[prefix]) / pure.relative_to(base))
    return path


def _ports(bindings: Mapping[str, Any], module: str, options: ComposeOptions, used: set[int]) -> list[str]:
    """Return compose `ports` for HostConfig.PortBindings, on the publish address unless a HostIp is given."""
    ports = []
    for container_port, hosts in bindings.items():
        number, _, protocol = str(container_port).partition("/")
        suffix = "" if protocol in ("", "tcp") else f"/{protocol}"
        for binding in hosts or [{}]:
            host_port = str(binding.get("HostPort", "") or "")
            if host_port and not host_port.isdigit():
                raise ManifestComposeError(
                    f'module "{module}": HostPort {host_port!r} of {container_port} must be one port number'
                )
            if host_port and int(host_port) in options.ports:
                used.add(int(host_port))
                host_port = str(options.ports[int(host_port)] or "")
            address = binding.get("HostIp") or options.publish_address
            ports.append(f"{address}:{host_port}:{number}{suffix}")
    return ports


def _sink_service(options: ComposeOptions) -> dict[str, Any]:
    """Return the sink: the local IoT Hub that takes `$upstream` and writes the lake."""
    hub_dir = Path(options.secrets_dir).resolve() / HUB_DIR
    return {
        "image": options.sink_image,
        "restart": "always",
        "command": [
            f"--listen=0.0.0.0:{SINK_PORT}",
            f"--users-file={HUB_USERS_IN_SINK}",
            "--lake=/lake",
            "--state-dir=/var/lib/edgefleet/sink",
            f"--flush-every-s={options.lake_flush_every_s:g}",
            "--health-file=/tmp/healthy",
        ],
        "healthcheck": copy.deepcopy(_SYSTEM_HEALTHCHECK),
        "volumes": [
            "lake:/lake",
            "sink-state:/var/lib/edgefleet",
            f"{_literal(str(hub_dir / USERS_FILE))}:{HUB_USERS_IN_SINK}:ro",
        ],
        "networks": {HUB_NETWORK: {}},
    }


def _standin_service(options: ComposeOptions, hosts: Mapping[str, str], restart_policy: str) -> dict[str, Any]:
    """Return the edgeHub stand-in: the manifest's routes, one broker per module at its fixed address."""
    networks: dict[str, Any] = {f"edgehub-{module}": {"ipv4_address": host} for module, host in hosts.items()}
    networks[HUB_NETWORK] = {}
    hub_password = hub_client_password_file(Path(options.secrets_dir).resolve() / HUB_DIR, HUB_PUBLISHER_USER)
    return {
        "image": options.standin_image,
        "restart": RESTART.get(restart_policy, "always"),
        "command": [
            f"--deployment={MANIFEST_IN_STANDIN}",
            f"--edge-device={options.edge_device}",
            "--state-dir=/var/lib/edgefleet/edgehub",
            "--ca-export-dir=/var/lib/edgefleet-ca",
            *(f"--module-host={module}={host}" for module, host in hosts.items()),
            f"--upstream-mqtt={SINK_SERVICE}:{SINK_PORT}",
            f"--upstream-username={HUB_PUBLISHER_USER}",
            f"--upstream-password-file={HUB_PASSWORD_IN_STANDIN}",
            f"--module-keys-file={MODULE_KEYS_IN_STANDIN}",
            "--health-file=/tmp/healthy",
        ],
        "healthcheck": copy.deepcopy(_SYSTEM_HEALTHCHECK),
        "volumes": [
            f"{_literal(str(options.manifest_path))}:{MANIFEST_IN_STANDIN}:ro",
            "edgehub-state:/var/lib/edgefleet",
            f"{EDGEHUB_CA_VOLUME}:/var/lib/edgefleet-ca",
            f"{_literal(str(Path(options.secrets_dir).resolve() / KEYS_FILE))}:{MODULE_KEYS_IN_STANDIN}:ro",
            f"{_literal(str(hub_password))}:{HUB_PASSWORD_IN_STANDIN}:ro",
        ],
        "depends_on": {SINK_SERVICE: {"condition": "service_healthy"}},
        "networks": networks,
    }


class _Subnets:
    """The compose networks' /24s under `<subnet>`: .0 the edge network, .1 the hub, .2 on one per module."""

    def __init__(self, prefix: str) -> None:
        try:
            ipaddress.ip_network(f"{prefix}.0.0/16")
            if prefix.count(".") != 1:
                raise ValueError
        except ValueError:
            raise ManifestComposeError(
                f"--subnet {prefix!r}: give the first two octets of a private block, e.g. 172.28"
            ) from None
        self.prefix = prefix

    def network(self, third: int) -> str:
        if third > 255:
            raise ManifestComposeError("too many modules for one /16 of networks (253 at most)")
        return f"{self.prefix}.{third}.0/24"

    def module(self, index: int) -> str:
        return self.network(2 + index)

    def standin_host(self, index: int) -> str:
        self.module(index)
        return f"{self.prefix}.{2 + index}.2"


def _env_list(entries: Iterable[Any], where: str) -> Iterable[tuple[str, str]]:
    """Yield createOptions.Env's `NAME=VALUE` entries as pairs."""
    for entry in entries:
        name, sep, value = str(entry).partition("=")
        if not sep or not name:
            raise ManifestComposeError(f"{where}.Env: {entry!r} is not NAME=VALUE")
        yield name, value


def _refuse_unknown(options: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Raise naming createOptions keys this translation would otherwise silently drop."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ManifestComposeError(
            f"{where}: {', '.join(unknown)} cannot be translated to compose (understood: {', '.join(known)}); "
            "run this manifest on an IoT Edge device, or extend edgefleet_cli/manifest_compose.py"
        )


def _check_all_used(flag: str, unused: set[str], what: str) -> None:
    """Raise when an option names something the manifest does not have (most likely a typo)."""
    if unused:
        raise ManifestComposeError(f"{flag} {', '.join(sorted(unused))}: {what} it; check the manifest")


def _literal(text: str) -> str:
    """Return text with `$` doubled: compose must not interpolate the manifest's values."""
    return text.replace("$", "$$")
