"""Validate a deployment manifest offline and report every problem, errors and warnings alike.

Beyond the structure (edgefleet.deployment.checks) it checks what a schema cannot: the route
grammar (edgefleet.routes), that routes name modules the manifest deploys, that they use the
inputs and outputs the modules' code declares (edgefleet.endpoints), and that our modules'
desired properties pass the schema the modules themselves apply (edgefleet.desired).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefleet.deployment.checks import Findings, Problem, Severity, check_structure
from edgefleet.deployment.load import Deployment, expand_placeholders, read_manifest_json
from edgefleet.deployment.schema import AGENT, DESIRED, DeploymentError
from edgefleet.desired import DESIRED_SCHEMAS, DesiredError, parse_desired
from edgefleet.endpoints import MODULES, ModuleEndpoints
from edgefleet.routes import Route, referenced_endpoints

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")

__all__ = ["Problem", "Severity", "validate_deployment"]


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
            raw = read_manifest_json(source)
        except DeploymentError as exc:
            return [Problem("file", str(exc))]
    try:
        expanded = expand_placeholders(raw, variables, source)
    except DeploymentError as exc:
        return [Problem("variables", str(exc))]
    problems = _check(expanded, endpoints)
    logger.debug(
        "validated %s: %d error(s), %d warning(s)",
        source or "deployment",
        sum(problem.severity == "error" for problem in problems),
        sum(problem.severity == "warning" for problem in problems),
    )
    return problems


def _check(raw: Mapping[str, Any], endpoints: Mapping[str, ModuleEndpoints]) -> list[Problem]:
    """Check the structure, then, when both twins are there, the routes and desired properties against the code."""
    structure = check_structure(raw)
    if not structure.has_agent_and_hub:
        return structure.problems
    against_code = _CodeChecker(structure.modules, structure.routes, endpoints)
    against_code.run()
    return [*structure.problems, *against_code.problems, *_check_desired(raw, structure.modules)]


def _check_desired(raw: Mapping[str, Any], modules: Sequence[str]) -> list[Problem]:
    """Check each deployed module's desired properties against the schema the module itself applies."""
    content = raw.get("modulesContent")
    findings = Findings()
    for name in modules:
        schema = DESIRED_SCHEMAS.get(name)
        if schema is None or not isinstance(content, Mapping):
            continue  # a module we do not ship: its properties are its own business
        twin = content.get(name, {})
        desired = twin.get(DESIRED, {}) if isinstance(twin, Mapping) else None
        if not isinstance(desired, Mapping):
            continue  # the structural check reported it
        # A template's `${NAME}` values are only known once built; the build checks them expanded.
        unexpanded = {key for key, value in desired.items() if isinstance(value, str) and _PLACEHOLDER.search(value)}
        try:
            parse_desired(schema, {key: value for key, value in desired.items() if key not in unexpanded})
        except DesiredError as err:
            for problem in err.problems:
                if problem.property not in unexpanded:
                    findings.error(f'twin "{name}"', f'desired property "{problem.property}": {problem.message}')
    return findings.problems


class _CodeChecker(Findings):
    """Check routes against the deployed modules and the endpoints their code declares.

    Module names are compared as edgeHub compares them: a route's source matches module ids
    ignoring case (BaseMessageSource), a BrokeredEndpoint names its target module exactly
    (EndpointFactory, ConnectionManager). Modules edgefleet does not ship (not in
    edgefleet/endpoints.py) are checked by name only, and draw no warning of their own.
    """

    def __init__(
        self, modules: Sequence[str], routes: Sequence[Route], endpoints: Mapping[str, ModuleEndpoints]
    ) -> None:
        super().__init__()
        self.modules = modules
        self.routes = routes
        self.endpoints = endpoints
        self.known = ", ".join(modules) or "none"
        self.by_folded_name = {name.lower(): name for name in modules}
        self.referenced = referenced_endpoints(routes)

    def run(self) -> None:
        """Check every route's ends, then every declared endpoint no route uses."""
        # `$body` conditions need JSON bodies; every edgefleet module sends application/json UTF-8
        # (docs/architecture.md), so they are allowed on any of our modules' outputs.
        for route in self.routes:
            self.check_source(route)
            self.check_sink(route)
        self.check_unrouted_endpoints()

    def check_source(self, route: Route) -> None:
        """Check that a route reads from a deployed module and an output its code declares."""
        where, source = f'route "{route.name}"', route.source
        if source.module is None:
            return
        module = self.by_folded_name.get(source.module.lower())
        if module is None:
            hint = " ('*' only works at the end of a source path)" if "*" in source.module else ""
            self.error(where, f'module "{source.module}" is not in {AGENT} modules (known: {self.known}){hint}')
            return
        if module != source.module:
            self.warning(
                where,
                f'source names module "{source.module}" but the module is "{module}": edgeHub matches '
                f"sources ignoring case, so this works, but the names differ only in case; write {module}",
            )
        if source.output is not None and module in self.endpoints:
            declared = self.endpoints[module].outputs
            if source.output.lower() not in {output.lower() for output in declared}:
                self.error(
                    where,
                    f'module "{module}" declares no output "{source.output}" in edgefleet/endpoints.py '
                    f"(declared: {', '.join(declared) or 'none'}); fix the route or declare the output",
                )

    def check_sink(self, route: Route) -> None:
        """Check that a route into a module feeds a deployed module and an input its code declares."""
        where, sink = f'route "{route.name}"', route.sink
        if sink.kind != "module_input" or sink.module is None:
            return
        if sink.module not in self.modules:
            module = self.by_folded_name.get(sink.module.lower())
            if module is not None:
                self.error(
                    where,
                    f'BrokeredEndpoint names module "{sink.module}" but the module is "{module}": the names '
                    f"differ only in case, and edgeHub delivers to the exact module id, so nothing would "
                    f"arrive; write {module}",
                )
            else:
                self.error(where, f'module "{sink.module}" is not in {AGENT} modules (known: {self.known})')
        elif sink.module in self.endpoints:
            declared = self.endpoints[sink.module].inputs
            if sink.input not in declared:
                self.error(
                    where,
                    f'module "{sink.module}" declares no input "{sink.input}" in edgefleet/endpoints.py '
                    f"(declared: {', '.join(declared) or 'none'}); fix the route or declare the input",
                )

    def check_unrouted_endpoints(self) -> None:
        """Warn about declared outputs no route reads, inputs no route feeds, and undeployed declared modules."""
        ours = [name for name in self.modules if name in self.endpoints]
        for name in ours:
            declaration = self.endpoints[name]
            self.check_outputs_read(name, declaration)
            self.check_inputs_fed(name, declaration)
        if not ours:
            return  # a third-party manifest: edgefleet's own modules are none of its business
        for name in self.endpoints:
            if name not in self.modules:
                self.warning(
                    f'module "{name}"', f"is declared in edgefleet/endpoints.py but {AGENT} does not deploy it"
                )

    def check_outputs_read(self, name: str, declaration: ModuleEndpoints) -> None:
        """Warn about each declared output of a module that no route reads."""
        if any(route.source.kind in ("all", "messages", "modules") for route in self.routes):
            return  # a fleet-wide source reads every output
        folded = name.lower()
        mine = [ref for ref in self.referenced if ref.direction == "output" and ref.module.lower() == folded]
        if any(ref.name is None for ref in mine):
            return  # a module-wide source reads every output of this module
        read = {str(ref.name).lower() for ref in mine}
        for output in declaration.outputs:
            if output.lower() not in read:
                self.warning(
                    f'module "{name}"',
                    f'no route reads output "{output}", so edgeHub drops what the module sends there; add '
                    f"FROM /messages/modules/{name}/outputs/{output} INTO ... or remove it from endpoints.py",
                )

    def check_inputs_fed(self, name: str, declaration: ModuleEndpoints) -> None:
        """Warn about each declared input of a module that no route feeds."""
        fed = {ref.name for ref in self.referenced if ref.direction == "input" and ref.module == name}
        for module_input in declaration.inputs:
            if module_input not in fed:
                self.warning(
                    f'module "{name}"',
                    f'no route feeds input "{module_input}"; add a route INTO '
                    f'BrokeredEndpoint("/modules/{name}/inputs/{module_input}") or remove it from endpoints.py',
                )
