"""Build the deployable IoT Edge manifest for a bundle from the template and the module.json files.

Placeholders are filled from, in order of precedence: `--var NAME=VALUE`, then what the build
knows — `MODULES.<m>` is `[registry/]<repository>:<tag>` from `modules/<m>/module.json`
(iotedgedev's convention; the inference image is tagged with the bundle version it bakes in),
`BUNDLE_VERSION` from the bundle's manifest — then the environment. The expanded manifest
must validate offline (structure, route grammar, modules and endpoints, createOptions) before
it is written, in the form IoT Hub takes: `createOptions` as a minified JSON string cut into
512-character chunks (`createOptions`, `createOptions01`, ...).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.bundle import read_manifest
from edgefleet.deployment.load import load_deployment, parse_deployment
from edgefleet.deployment.schema import AGENT, CREATE_OPTIONS_CHUNK, DESIRED, HUB, DeploymentError
from edgefleet.deployment.validate import validate_deployment

__all__ = [
    "INFERENCE",
    "MODULES_DIR",
    "RAW_TELEMETRY_ROUTE",
    "RAW_TELEMETRY_ROUTE_NAME",
    "build_variables",
    "deployed_form",
    "image_name",
    "module_images",
    "with_raw_telemetry_route",
    "write_deployment_manifest",
]

MODULES_DIR = Path("modules")
INFERENCE = "inference"
# Modules whose image is one of deployment/images/ (relative to the directory holding `modules_dir`):
# module name → its module.json, in iotedgedev's layout like the modules' own.
SERVICE_MODULES = {"fieldbroker": Path("deployment/images/field-broker/module.json")}
_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
# The sensor's record of every reading, sent upstream beside the predictions, which repeat each reading
# whole: off by default (it doubled the upstream bill), an opt-in route (`manifest build --raw-telemetry`).
RAW_TELEMETRY_ROUTE_NAME = "telemetryToUpstream"
RAW_TELEMETRY_ROUTE = "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream"


def image_name(repository: str, tag: str, registry: str = "") -> str:
    """Return `[registry/]repository:tag`."""
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    return f"{prefix}{repository}:{tag}"


def module_images(
    modules_dir: Path = MODULES_DIR, registry: str = "", bundle_version: str | None = None
) -> dict[str, str]:
    """Return `MODULES.<m>` → image for every `modules/<m>/module.json` and every `SERVICE_MODULES` entry."""
    images: dict[str, str] = {}
    specs = [(spec.parent.name, spec) for spec in sorted(Path(modules_dir).glob("*/module.json"))]
    specs += [
        (module, Path(modules_dir).parent / spec)
        for module, spec in SERVICE_MODULES.items()
        if (Path(modules_dir).parent / spec).is_file()
    ]
    for module, spec_path in specs:
        try:
            image = json.loads(spec_path.read_text(encoding="utf-8"))["image"]
            repository, tag = str(image["repository"]), str(image["tag"]["version"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DeploymentError(
                f"{spec_path}: cannot read image.repository and image.tag.version ({err}); "
                "see iotedgedev's module.json layout"
            ) from err
        if module == INFERENCE and bundle_version:
            tag = bundle_version  # the image is its code plus the bundle baked into it
        images[f"MODULES.{module}"] = image_name(repository, tag, registry)
    return images


def build_variables(
    template: Path,
    *,
    given: Mapping[str, str] | None = None,
    bundle_dir: Path | None = None,
    registry: str = "",
    modules_dir: Path = MODULES_DIR,
    environment: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return a value for every placeholder of the template: given, then derived, then environment."""
    bundle_version = read_manifest(bundle_dir).bundle_version if bundle_dir is not None else None
    derived = module_images(modules_dir, registry, bundle_version)
    if bundle_version is not None:
        derived["BUNDLE_VERSION"] = bundle_version
    wanted = set(_PLACEHOLDER.findall(Path(template).read_text(encoding="utf-8")))
    environment = environment or {}
    variables = {name: environment[name] for name in wanted if name in environment}
    variables.update(derived)
    variables.update(given or {})
    return variables


def deployed_form(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Return an expanded template as IoT Hub takes it: createOptions as 512-character JSON strings."""
    manifest = copy.deepcopy(dict(raw))
    manifest.pop("$schema-template", None)  # a template marker; iotedgedev drops it too
    agent = manifest["modulesContent"][AGENT][DESIRED]
    for group in ("systemModules", "modules"):
        for spec in agent.get(group, {}).values():
            settings = spec.get("settings", {})
            options = settings.get("createOptions")
            if not isinstance(options, Mapping):
                continue
            text = json.dumps(options, separators=(",", ":"))
            chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)] or ["{}"]
            settings["createOptions"] = chunks[0]
            for index, chunk in enumerate(chunks[1:], start=1):
                settings[f"createOptions{index:02d}"] = chunk
    return manifest


def with_raw_telemetry_route(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a manifest with the opt-in raw telemetry route (`telemetryToUpstream`) added."""
    manifest = copy.deepcopy(dict(raw))
    routes = manifest["modulesContent"][HUB][DESIRED].setdefault("routes", {})
    routes.setdefault(RAW_TELEMETRY_ROUTE_NAME, RAW_TELEMETRY_ROUTE)
    return manifest


def write_deployment_manifest(
    template: Path, out_path: Path, variables: Mapping[str, str], *, raw_telemetry: bool = False
) -> Path:
    """Expand the template, check it offline, and write it atomically in the deployed form.

    `raw_telemetry` adds the opt-in route that sends every raw reading upstream too.
    """
    deployment = load_deployment(template, variables)
    if raw_telemetry:
        deployment = parse_deployment(with_raw_telemetry_route(deployment.raw), source=template)
    errors = [p for p in validate_deployment(deployment) if p.severity == "error"]
    if errors:
        details = "\n".join(f"  {p}" for p in errors)
        raise DeploymentError(f"{template} does not validate once expanded ({len(errors)} error(s)):\n{details}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(deployed_form(deployment.raw), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_path)
    load_deployment(out_path)  # the file as written reads back
    return out_path
