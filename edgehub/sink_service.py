"""The local IoT Hub as its own service — a Mosquitto the stand-in publishes to, and the lake writer.

Run it with `python -m edgehub.sink_service` (or `edgefleet sink`). The stand-in
(`python -m edgehub --upstream-mqtt HOST:PORT`) publishes every `$upstream`
message to this service's broker (wire form in `edgehub.hub`). The service
subscribes with a persistent session at QoS 1 and feeds a `LakeSink`. The broker keeps its
sessions on disk, so a restart of either side loses nothing that was acknowledged. Each message
is appended to a journal (`<state_dir>/journal`) before paho acknowledges it and stays there
until its rows are in the lake's visible files (a lake file rolls into place after `--roll-every-s`
or at `--roll-bytes`), so a SIGKILL inside the flush window or with a file still open loses nothing
either: the next start writes what the journal kept (a row may then come twice, never zero times).

The broker refuses anonymous clients (`--users-file`, see `edgehub.hub_auth`): the stand-in may
only publish upstream messages, the dashboard only read them; the service's own subscriber logs
in with a password made at every start. `--allow-anonymous` opens it, for development only.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import private_dir
from edgefleet.health import touch_health
from edgefleet.hub_wire import HUB_SUBSCRIPTION, KEEPALIVE_S, parse_hub_message
from edgefleet.journal import Journal, JournalError, Segment
from edgefleet.mqtt_tuning import enable_tcp_nodelay
from edgefleet.process import configure_logging, load_settings, stop_event_on_signals
from edgefleet.routes import Message
from edgefleet.topics import TopicError
from edgefleet.watchdog import UNHEALTHY_EXIT_CODE, UnhealthyClock
from edgehub.broker import AUTOSAVE, Broker, BrokerAuth, BrokerKeeper, Listener, mosquitto_password_hash
from edgehub.hub_auth import SINK_USER, write_hub_broker_auth
from edgehub.sink import LakeSink
from edgehub.sink_settings import SinkSettings, parse_flags

logger = logging.getLogger(__name__)

__all__ = ["SINK_CLIENT_ID", "SinkService", "main"]

SINK_CLIENT_ID = "edgefleet-lake-sink"
# The health file is touched and the exit decision taken this often (a dead broker is restarted
# sooner, by the service's `BrokerKeeper`).
HEALTH_INTERVAL_S = 1.0
_WARN_LIMIT = 5  # journal write failures logged, then only counted


class SinkService:
    """Run the hub broker and the lake writer until stopped."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.subscribed = threading.Event()
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sink: LakeSink | None = None
        try:
            private_dir(settings.state_dir)  # the journal and the broker's persistence hold readings
            self._journal = Journal(settings.state_dir / "journal")
        except (OSError, JournalError) as err:
            raise EdgefleetError(f"{err}: pass --state-dir or set SINK_STATE_DIR to a writable folder") from err
        self._broker = Broker(
            settings.state_dir / "broker",
            "hub",
            [Listener(*settings.listen)],
            persistent=True,
            autosave=AUTOSAVE,
            auth=self._write_auth(),
        )
        enable_tcp_nodelay()
        client = mqtt.Client(client_id=SINK_CLIENT_ID, clean_session=False, protocol=mqtt.MQTTv311)
        if self._password is not None:
            client.username_pw_set(SINK_USER, self._password)
        client.reconnect_delay_set(min_delay=0.05, max_delay=2)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        self._client = client
        self._keeper: BrokerKeeper | None = None

    def _write_auth(self) -> BrokerAuth | None:
        """Write the hub broker's users (the file's, plus the sink's own) and ACL; None: anonymous (development)."""
        self._password: str | None = None
        users = self.settings.users_file
        if users is None:
            logger.warning("The hub broker takes anonymous clients (--allow-anonymous): for development only")
            return None
        # Internal, new at every start: only this process and its broker know it.
        self._password = secrets.token_urlsafe(32)
        try:
            folder = private_dir(self.settings.state_dir / "broker")
            return write_hub_broker_auth(folder, {**users.hashes, SINK_USER: mosquitto_password_hash(self._password)})
        except OSError as err:
            raise EdgefleetError(f"{err}: pass --state-dir or set SINK_STATE_DIR to a writable folder") from err

    def broker_restarts(self) -> int:
        """Return how often the hub broker was restarted after it died."""
        return self._keeper.restarts().get(self._broker.name, 0) if self._keeper is not None else 0

    def problems(self) -> list[str]:
        """Return what makes the service unhealthy, one line each (empty while healthy)."""
        found = self._keeper.problems() if self._keeper is not None else []
        if not found and not self._broker.running():
            found.append("the hub broker is down")
        if not self.subscribed.is_set():
            found.append("the lake writer is not subscribed to the hub broker")
        return found

    def stats(self) -> dict[str, int]:
        """Return counters: hub messages received, rejected topics, plus the lake sink's counters."""
        with self._lock:
            stats = dict(self._stats)
        if self._sink is not None:
            stats.update({f"lake_{key}": value for key, value in self._sink.stats().items()})
        stats.update({f"journal_{key}": value for key, value in self._journal.stats().items()})
        return stats

    def _open_sink(self) -> LakeSink:
        """Open the lake writer and hand it what the journal kept from an earlier run (before subscribing)."""
        self._sink = LakeSink(
            self.settings.lake_dir,
            self.settings.flush_every_s,
            self.settings.flush_rows,
            self.settings.max_feature_columns,
            roll_every_s=self.settings.roll_every_s,
            roll_bytes=self.settings.roll_bytes,
        )
        replayed, kept = 0, True
        for record in self._journal.recover():
            kept = self._take(record.key, record.payload) and kept
            replayed += 1
        if kept:
            self._journal.forget_recovered()
        else:  # their new copies are not all on disk: keep the old segments for the next start
            logger.error("Kept the journal's old segments in %s for the next start", self._journal.folder)
        if replayed:
            logger.info("Writing %d hub message(s) again that an earlier run took but had not written", replayed)
        with self._lock:
            self._stats["replayed"] += replayed
        return self._sink

    def run(self, stop_event: threading.Event, on_ready: Callable[[SinkService], None] | None = None) -> int:
        """Serve until `stop_event` is set, then drain: disconnect, write buffered rows, stop the broker.

        Return 0, or UNHEALTHY_EXIT_CODE once unhealthy for `unhealthy_exit_s` without a break (its
        broker cannot be restarted, or it cannot subscribe): a container restarts on an exit only.
        """
        private_dir(self.settings.lake_dir)  # the lake holds every reading: owner only
        clock = UnhealthyClock(self.settings.unhealthy_exit_s, time.monotonic(), setting="SINK_UNHEALTHY_EXIT_S")
        self._broker.start()
        self._keeper = BrokerKeeper([self._broker]).start()
        try:
            self._open_sink()
            listen_host, listen_port = self.settings.listen
            # The broker listens on every address here; the subscriber reaches it on loopback.
            host = "127.0.0.1" if listen_host in ("0.0.0.0", "") else listen_host
            self._client.connect_async(host, listen_port, keepalive=KEEPALIVE_S)
            self._client.loop_start()
            if not self.subscribed.wait(15):
                logger.warning("Sink is not subscribed to its own broker yet; still trying")
            logger.info(
                "IoT Hub sink on %s:%d writing the lake in %s", listen_host, listen_port, self.settings.lake_dir
            )
            if on_ready is not None:
                on_ready(self)
            while True:
                problems, now_s = self.problems(), time.monotonic()
                if not problems:
                    touch_health(self.settings.health_file)
                if clock.observe(not problems, now_s):
                    logger.error(clock.giving_up("The IoT Hub sink", "; ".join(problems), now_s))
                    return UNHEALTHY_EXIT_CODE
                if stop_event.wait(HEALTH_INTERVAL_S if not problems else 0.5):
                    return 0
        finally:
            self._keeper.stop()  # before the broker: it would start it again
            self._client.disconnect()
            self._client.loop_stop()
            try:
                if self._sink is not None:
                    self._sink.close()
                    logger.info("Sink stopped: %s", self.stats())
            finally:
                self._journal.close()  # what is not in the lake yet stays for the next start
                self._broker.stop()

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            logger.warning("Hub broker refused the sink: %s", mqtt.connack_string(rc))
            return
        client.subscribe(HUB_SUBSCRIPTION, qos=1)

    def _handle_subscribe(self, client: Any, userdata: Any, mid: int, granted_qos: Any) -> None:
        if any(qos == 0x80 for qos in granted_qos):
            logger.error("Hub broker refused the sink's subscription")
            return
        self.subscribed.set()

    def _handle_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        self.subscribed.clear()
        if rc != 0:
            logger.warning("Sink lost its broker (%s); reconnecting", mqtt.error_string(rc))

    def _handle_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """Journal one hub message and hand it to the lake sink (paho acknowledges it after this returns)."""
        self._take(msg.topic, bytes(msg.payload))

    def _take(self, topic: str, payload: bytes) -> bool:
        """Journal a hub message and hand it to the lake sink; return False if the journal could not keep it."""
        assert self._sink is not None
        try:
            message = parse_hub_message(topic, payload)
        except TopicError as err:
            logger.warning("Sink ignores a message on %r: %s", topic, err)
            with self._lock:
                self._stats["rejected"] += 1
            return True
        with self._lock:
            self._stats["received"] += 1
        segment = self._journal_append(topic, payload, message)
        try:
            self._sink(message, None if segment is None else self._releaser(segment))
        except Exception:  # one bad message must not stop the sink; the journal keeps it for the next start
            logger.exception("Lake sink failed on a message from %s", message.connection_module_id)
            with self._lock:
                self._stats["errors"] += 1
        return segment is not None

    def _releaser(self, segment: Segment) -> Callable[[], None]:
        """Return the callback that lets the journal forget a message once the lake has it."""
        return lambda: self._journal.release(segment)

    def _journal_append(self, topic: str, payload: bytes, message: Message) -> Segment | None:
        """Keep a hub message in the journal; on failure log how to fix it and write it anyway (unprotected)."""
        try:
            return self._journal.append(topic, payload)
        except JournalError as err:
            with self._lock:
                self._stats["journal_errors"] += 1
                count = self._stats["journal_errors"]
            if count <= _WARN_LIMIT:
                logger.error(
                    "Cannot journal a hub message from %s (%s): it goes to the lake, but a crash before the next "
                    "flush would lose it; free disk space or make %s writable (SINK_STATE_DIR)",
                    message.connection_module_id,
                    err,
                    self._journal.folder,
                )
            return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sink service until SIGTERM or SIGINT; exit 2 on a configuration mistake, 3 when it stayed unhealthy."""
    try:
        settings = load_settings(SinkSettings, **parse_flags(argv))
        configure_logging(settings.log_level)
        stop_event = stop_event_on_signals()
        return SinkService(settings).run(stop_event)
    except EdgefleetError as err:
        print(f"sink: {err}", file=sys.stderr)  # noqa: T201 - the one line a failed start leaves
        return 2


if __name__ == "__main__":
    sys.exit(main())
