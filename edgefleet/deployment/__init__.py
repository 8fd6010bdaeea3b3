"""The IoT Edge deployment manifest: load `deployment/deployment.template.json`, validate it, build it.

The manifest is the single source of the edge's modules, routes and module-twin desired properties
(docs/architecture.md). Its shape follows Microsoft's "Properties of the IoT Edge agent and IoT Edge
hub module twins" and the SchemaStore schemas `azure-iot-edgeagent-deployment-1.1.json` /
`azure-iot-edgehub-deployment-1.2.json`:

    {"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion", "runtime", "systemModules", "modules"}},
        "$edgeHub": {"properties.desired": {"schemaVersion", "routes", "storeAndForwardConfiguration"}},
        "<module>": {"properties.desired": {...}}}}

`load` reads and types it, `validate` checks it offline, `build` writes the deployed form for a bundle.
"""

from edgefleet.deployment.build import (
    RAW_TELEMETRY_ROUTE,
    RAW_TELEMETRY_ROUTE_NAME,
    build_variables,
    deployed_form,
    image_name,
    module_images,
    with_raw_telemetry_route,
    write_deployment_manifest,
)
from edgefleet.deployment.checks import Problem, Severity
from edgefleet.deployment.load import (
    DEFAULT_TEMPLATE,
    Deployment,
    ModuleSpec,
    load_deployment,
    parse_deployment,
    parse_variables,
)
from edgefleet.deployment.schema import CREATE_OPTIONS_CHUNK, DeploymentError
from edgefleet.deployment.validate import validate_deployment

__all__ = [
    "CREATE_OPTIONS_CHUNK",
    "DEFAULT_TEMPLATE",
    "RAW_TELEMETRY_ROUTE",
    "RAW_TELEMETRY_ROUTE_NAME",
    "Deployment",
    "DeploymentError",
    "ModuleSpec",
    "Problem",
    "Severity",
    "build_variables",
    "deployed_form",
    "image_name",
    "load_deployment",
    "module_images",
    "parse_deployment",
    "parse_variables",
    "validate_deployment",
    "with_raw_telemetry_route",
    "write_deployment_manifest",
]
