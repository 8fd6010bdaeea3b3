"""Serve the dashboard until stopped: the hub feed into a `FleetState`, the Bokeh server on top."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from tornado.ioloop import PeriodicCallback

from dashboard.app import build_server
from dashboard.feed import HubFeed
from dashboard.settings import DashboardSettings
from dashboard.state import FleetState

logger = logging.getLogger(__name__)

__all__ = ["run_dashboard"]

STOP_POLL_MS: Final = 200  # how soon the server notices the stop event


def run_dashboard(
    settings: DashboardSettings, stop_event: threading.Event, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve until `stop_event` is set; `on_ready` gets the dashboard's URL once it serves."""
    hub_host, hub_port = settings.hub
    state = FleetState(silent_after_s=settings.silent_after_s)
    login = settings.hub_password_file
    feed = HubFeed(
        state,
        hub_host,
        hub_port,
        username=None if settings.hub_anonymous else settings.hub_username,
        password=login.password if login is not None else None,
    ).start()
    try:
        server = build_server(
            state,
            port=settings.port,
            address=settings.address,
            allow_websocket_origin=settings.allow_websocket_origin,
        )
        server.start()
        loop = server.io_loop
        # The Tornado loop owns this thread: it checks the event instead of blocking on it.
        watcher = PeriodicCallback(lambda: loop.stop() if stop_event.is_set() else None, STOP_POLL_MS)
        watcher.start()
        shown = "localhost" if settings.address in ("0.0.0.0", "::") else settings.address
        url = f"http://{shown}:{settings.port}/"
        logger.info("Dashboard: %s (hub %s:%d)", url, hub_host, hub_port)
        if on_ready is not None:
            on_ready(url)
        try:
            loop.start()
        finally:
            watcher.stop()
            server.stop()
    finally:
        feed.stop()
    logger.info("Dashboard stopped")
