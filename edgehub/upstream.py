"""Where the stand-in sends `$upstream`: the seam between routing and the local IoT Hub.

The stand-in only routes; whoever starts it chooses the upstream and closes it after the
stand-in stopped: `HubPublisher` (the sink service's broker, in containers), `LakeSink` (the
lake written in this process, `edgefleet up` and the tests), or either with a copy for the
dashboard (`MirroredUpstream`).

An upstream calls a message's `on_durable` once the message survives a kill of this process
(acknowledged by the hub broker, or written to the lake's files): only then does the router
let its journal forget it. An upstream may call it on any thread, at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from edgefleet.routes import Message

logger = logging.getLogger(__name__)

__all__ = ["MirroredUpstream", "OnDurable", "Upstream"]

OnDurable = Callable[[], None]


class Upstream(Protocol):
    """Take routed `$upstream` messages; report counters and health; close when the stand-in stopped."""

    def __call__(self, message: Message, on_durable: OnDurable | None = None) -> None:
        """Take one message; call `on_durable` once it is durable (on the router's upstream thread; may block)."""

    def stats(self) -> dict[str, int]:
        """Return counters for status displays."""

    def healthy(self) -> bool:
        """Return whether messages currently reach their destination."""

    def close(self) -> object:
        """Deliver or write what is held, then release connections and threads."""


class MirroredUpstream:
    """Hand each message to the primary upstream, then a copy to a watcher that must never hold it up."""

    def __init__(self, primary: Upstream, mirror: Upstream) -> None:
        self.primary = primary
        self.mirror = mirror
        self.mirror_errors = 0

    def __call__(self, message: Message, on_durable: OnDurable | None = None) -> None:
        """Deliver to the primary (its errors propagate; it says when the message is durable), then try the mirror."""
        self.primary(message, on_durable)
        try:
            self.mirror(message)
        except Exception as err:  # the watcher's problem never reaches the lake
            self.mirror_errors += 1
            if self.mirror_errors == 1:
                logger.warning("Cannot copy upstream messages to the watcher: %s", err)

    def stats(self) -> dict[str, int]:
        """Return the primary's counters plus how many copies failed."""
        return {**self.primary.stats(), "mirror_errors": self.mirror_errors}

    def healthy(self) -> bool:
        """Return the primary's health: the watcher is optional."""
        return self.primary.healthy()

    def close(self) -> None:
        """Close the primary, then the mirror."""
        try:
            self.primary.close()
        finally:
            self.mirror.close()
