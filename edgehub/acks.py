"""Run a callback when the broker acknowledges one QoS 1 publish (paho 1.6 numbers them by `mid`).

paho 1.6 sends a publish inside `client.publish()` and calls `on_publish` from its network
thread, so the PUBACK can arrive before `publish()` has returned the `mid` to the caller. The
book therefore remembers acknowledgements it cannot match yet and settles them when the `mid`
is registered. Every publish must be registered (with `None` when nobody waits for it):
message ids are reused after 65,535 publishes, and an early acknowledgement nobody claimed
would otherwise settle a later publish that happens to get the same id.

paho calls `on_publish` holding its own `_out_message_mutex`: the book's lock is held only for
dictionary updates, never around `client.publish` nor while running a callback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["Callback", "PubackBook"]

Callback = Callable[[], None]


class PubackBook:
    """Match PUBACKs to the callbacks of the publishes they acknowledge, in either order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._waiting: dict[int, Callback | None] = {}
        self._early: set[int] = set()

    def register(self, mid: int, on_ack: Callback | None) -> None:
        """Note the publish `mid` (just returned by `client.publish`); run `on_ack` if it was acknowledged already."""
        with self._lock:
            early = mid in self._early
            if early:
                self._early.discard(mid)
            else:
                self._waiting[mid] = on_ack
        if early and on_ack is not None:
            self._run(on_ack)

    def acknowledged(self, mid: int) -> None:
        """Settle the publish `mid` (call from `on_publish`): run its callback, or remember it for `register`."""
        with self._lock:
            if mid in self._waiting:
                on_ack = self._waiting.pop(mid)
            else:
                self._early.add(mid)
                on_ack = None
        if on_ack is not None:
            self._run(on_ack)

    def pending(self) -> int:
        """Return how many registered publishes wait for their PUBACK."""
        with self._lock:
            return len(self._waiting)

    def _run(self, on_ack: Callback) -> None:
        try:
            on_ack()
        except Exception:  # the publish is acknowledged; a failing bookkeeping callback must not stop paho's thread
            logger.exception("Acknowledgement callback for %s failed", self.name)
