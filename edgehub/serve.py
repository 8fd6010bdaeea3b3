"""The stand-in process wired: settings → manifest → upstream → `run_standin` until stopped.

`python -m edgehub` and `edgefleet edgehub` both run `serve_standin`; this is where the
upstream is chosen, so the stand-in itself never decides where the local IoT Hub is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgefleet.deployment import load_deployment
from edgefleet.endpoints import MODULES
from edgehub.hub import HubPublisher
from edgehub.settings import EdgeHubSettings
from edgehub.standin import EdgeHubStandIn, run_standin
from edgehub.upstream import Upstream

__all__ = ["open_upstream", "serve_standin"]


def open_upstream(settings: EdgeHubSettings) -> Upstream:
    """Return the sink service's publisher when `upstream_mqtt` is set, else a lake writer here."""
    if settings.upstream_mqtt is not None:
        host, port = settings.upstream_mqtt
        login = settings.upstream_password_file
        return HubPublisher(
            host,
            port,
            f"edgefleet-edgehub-{settings.edge_device}",
            username=None if settings.upstream_anonymous else settings.upstream_username,
            password=login.password if login is not None else None,
        ).start()
    # The stand-in's image has no pandas: the lake writer is imported only where it writes the lake.
    from edgehub.sink import LakeSink

    return LakeSink(settings.lake_dir, settings.flush_every_s, settings.flush_rows)


def serve_standin(
    settings: EdgeHubSettings,
    stop_event: threading.Event,
    on_ready: Callable[[EdgeHubStandIn], None] | None = None,
) -> int:
    """Run the stand-in the manifest describes until `stop_event` is set; close the upstream after it.

    Return the process's exit code: 0, or 3 when it stayed unhealthy (`unhealthy_exit_s`).
    """
    deployment = load_deployment(settings.deployment, settings.variables)
    # A module that never talks to edgeHub (the field broker) gets no broker of the stand-in.
    modules = tuple(m for m in deployment.modules if m not in MODULES or MODULES[m].edgehub_client)
    upstream = open_upstream(settings)
    try:
        standin = EdgeHubStandIn(
            settings.state_dir,
            settings.edge_device,
            modules,
            deployment.routes,
            {module: deployment.desired(module) for module in modules},
            upstream=upstream,
            ip_base=settings.ip_base,
            module_hosts=settings.module_hosts,
            ca_export_dir=settings.ca_export_dir,
            module_keys_file=settings.module_keys_file,
            ttl_s=deployment.store_and_forward_ttl_s,
            method_port=settings.method_port,
        )
        return run_standin(
            standin,
            stop_event,
            health_file=settings.health_file,
            on_ready=on_ready,
            unhealthy_exit_s=settings.unhealthy_exit_s,
        )
    finally:
        upstream.close()
