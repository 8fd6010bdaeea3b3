"""Send a module's messages on background threads, retrying until edgeHub takes them."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.messages import CONTENT_ENCODING, units_4kb

logger = logging.getLogger(__name__)

__all__ = ["CLOSE_TIMEOUT_S", "Outbox"]

SEND_RETRY_FIRST_S = 0.2
SEND_RETRY_MAX_S = 10.0
CLOSE_TIMEOUT_S = 1.0  # close follows a drain: senders are idle, or stuck on an edgeHub that is gone


@dataclass(frozen=True, slots=True)
class _Outgoing:
    output: str
    body: bytes
    properties: Mapping[str, str] | None
    on_sent: Callable[[], None] | None
    content_encoding: str


class Outbox:
    """Send messages on background threads, retrying until edgeHub takes them.

    `put` blocks when `max_pending` messages wait: back-pressure reaches whoever produces
    (the field MQTT client, the SDK's input handler) instead of memory growing without bound.
    An outbox made `held` queues but sends nothing until `release` (or drops all at `discard`).
    """

    def __init__(
        self,
        send: Callable[[str, bytes, Mapping[str, str] | None, str], None],
        threads: int = 2,
        max_pending: int = 2000,
        held: bool = False,
    ) -> None:
        self._send = send
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._closing = threading.Event()
        self._open = threading.Event()
        self._discarding = False
        if not held:
            self._open.set()
        self.discarded = 0
        self.sent: dict[str, int] = {}
        self.bytes_sent: dict[str, int] = {}
        self.units_sent: dict[str, int] = {}
        self.retries = 0
        self._threads = [threading.Thread(target=self._loop, name=f"outbox-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def put(
        self,
        output: str,
        body: bytes,
        properties: Mapping[str, str] | None = None,
        on_sent: Callable[[], None] | None = None,
        content_encoding: str = CONTENT_ENCODING,
    ) -> None:
        """Queue one message for an output; `on_sent` runs once edgeHub acknowledged it (e.g. to free a journal).

        `content_encoding` is the message's `contentEncoding` (`edgefleet.envelope`: "gzip" for a compressed body).
        """
        with self._lock:
            self._busy += 1
        self._queue.put(_Outgoing(output, body, properties, on_sent, content_encoding))

    def release(self) -> None:
        """Send what is queued and all that comes (an outbox made `held` waits for this)."""
        self._open.set()

    def discard(self) -> None:
        """Drop what is queued and all that comes, unsent: no `on_sent` runs, so what they hold stays held."""
        with self._lock:
            self._discarding = True
        self._open.set()

    def pending(self) -> int:
        """Return messages queued or being sent."""
        with self._lock:
            return self._busy

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._open.wait()
            if self._discarding:
                with self._lock:
                    self.discarded += 1
                    self._done()
                continue
            delay_s = SEND_RETRY_FIRST_S
            while True:
                try:
                    self._send(item.output, item.body, item.properties, item.content_encoding)
                    break
                except Exception as err:  # the SDK raises its own types; keep the message and retry
                    with self._lock:
                        self.retries += 1
                    logger.warning("Send to %s failed (%s); retrying in %.1f s", item.output, err, delay_s)
                    time.sleep(delay_s * (0.5 + random.random() / 2))
                    delay_s = min(SEND_RETRY_MAX_S, delay_s * 2)
            if item.on_sent is not None:
                try:
                    item.on_sent()
                except Exception:  # the message is sent; a failing bookkeeping callback must not stop sending
                    logger.exception("After sending to %s", item.output)
            with self._lock:
                self.sent[item.output] = self.sent.get(item.output, 0) + 1
                self.bytes_sent[item.output] = self.bytes_sent.get(item.output, 0) + len(item.body)
                self.units_sent[item.output] = self.units_sent.get(item.output, 0) + units_4kb(len(item.body))
                self._done()

    def _done(self) -> None:
        """Count one message as no longer pending (the lock held)."""
        self._busy -= 1
        if self._busy == 0:
            self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued message is sent; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stats(self) -> dict[str, Any]:
        """Return per-output message, byte and 4 KB-unit counts."""
        with self._lock:
            return {
                "sent": dict(self.sent),
                "bytes": dict(self.bytes_sent),
                "units_4kb": dict(self.units_sent),
                "retries": self.retries,
                "pending": self._busy,
                "discarded": self.discarded,
            }

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.sent, self.bytes_sent, self.units_sent, self.retries, self.discarded = {}, {}, {}, 0, 0

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the sender threads (call `drain` first to send what is queued) within `timeout_s`.

        With edgeHub gone the queue may be full and a sender stuck in the SDK: those (daemon)
        threads are left behind rather than holding up the module's exit. A held outbox never released
        discards what it holds.
        """
        self._closing.set()
        if not self._open.is_set():
            self.discard()
        deadline_s = time.monotonic() + timeout_s
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=max(0.0, deadline_s - time.monotonic()))
            except queue.Full:
                logger.warning("Outbox closed with %d message(s) unsent", self.pending())
                break
        for thread in self._threads:
            thread.join(max(0.0, deadline_s - time.monotonic()))
