"""The TLS front of the module brokers: SAS tokens checked at CONNECT, as edgeHub does, then bytes piped.

Mosquitto cannot verify an HMAC-signed SAS token, so each module's port 8883 is served here: the
front terminates TLS, reads the client's CONNECT, and checks it with `edgehub.auth.check_connect`.
A refused client gets the CONNACK edgeHub sends (5, not authorized) and is disconnected; an
accepted one is connected to the module's Mosquitto on a loopback port, its CONNECT passed on
with the broker's internal credentials for that module (client id, clean session, keep-alive
and will unchanged), and from then on bytes flow both ways untouched. Mosquitto's ACL file
then limits that identity to the module's own topics. The connection is closed when its token
expires, as IoT Hub does; the SDK renews its token before that by connecting again.
`on_connection(module, True/False)` hears of each accepted connection opening and closing:
the router holds messages for a module with none (store and forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from edgefleet.errors import EdgefleetError
from edgehub.auth import (
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    ModuleIdentity,
    check_connect,
)

if TYPE_CHECKING:
    from edgehub.certs import CertPaths

logger = logging.getLogger(__name__)

__all__ = [
    "AuthFront",
    "Connect",
    "FrontError",
    "FrontRoute",
    "PacketError",
    "connack",
    "encode_connect",
    "parse_connect",
]

# edgeHub drops a client that sends no CONNECT soon after connecting (the protocol gateway's
# connect timeout); a few seconds is plenty on a LAN and keeps idle sockets from piling up.
CONNECT_TIMEOUT_S = 10.0
# A CONNECT carries a client id, a will and credentials: far below this.
MAX_CONNECT_BYTES = 64 * 1024
_CHUNK = 256 * 1024
_WARN_LIMIT = 5  # refusals of one kind logged per module; the rest only counted
_MQTT_LEVEL_311 = 4


class FrontError(EdgefleetError):
    """Raise when the front cannot listen on a module's address."""


class PacketError(ValueError):
    """Raise for bytes that are not a well-formed MQTT CONNECT."""


@dataclass(frozen=True, slots=True)
class Connect:
    """The fields of an MQTT 3.1.1 CONNECT packet."""

    protocol_name: str
    level: int
    clean_session: bool
    keepalive: int
    client_id: str
    will_topic: str | None = None
    will_message: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class FrontRoute:
    """One module's front: where modules connect, whom they must be, and the broker behind it."""

    identity: ModuleIdentity
    listen_host: str
    listen_port: int
    broker_host: str
    broker_port: int
    broker_username: str
    broker_password: str = field(repr=False)


class _Reader:
    """Read MQTT fields from a packet body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise PacketError("CONNECT is truncated")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("CONNECT holds a string that is not UTF-8") from None


def parse_connect(body: bytes) -> Connect:
    """Return the CONNECT whose variable header and payload (after the fixed header) are `body`."""
    reader = _Reader(body)
    protocol_name = reader.text()
    level = reader.u8()
    flags = reader.u8()
    keepalive = reader.u16()
    if flags & 0x01:
        raise PacketError("CONNECT sets the reserved flag")
    has_will, has_user, has_password = bool(flags & 0x04), bool(flags & 0x80), bool(flags & 0x40)
    if not has_will and flags & 0x38:
        raise PacketError("CONNECT sets will QoS or retain without a will")
    if has_password and not has_user:
        raise PacketError("CONNECT has a password without a username")
    client_id = reader.text()
    will_topic = reader.text() if has_will else None
    will_message = reader.binary() if has_will else b""
    username = reader.text() if has_user else None
    password = reader.binary() if has_password else None
    if reader.pos != len(body):
        raise PacketError("CONNECT has trailing bytes")
    return Connect(
        protocol_name=protocol_name,
        level=level,
        clean_session=bool(flags & 0x02),
        keepalive=keepalive,
        client_id=client_id,
        will_topic=will_topic,
        will_message=will_message,
        will_qos=(flags >> 3) & 0x03,
        will_retain=bool(flags & 0x20),
        username=username,
        password=password,
    )


def _field(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise PacketError("CONNECT field longer than 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def encode_connect(connect: Connect) -> bytes:
    """Return `connect` as a whole MQTT packet (fixed header included)."""
    flags = 0x02 if connect.clean_session else 0
    payload = _field(connect.client_id.encode())
    if connect.will_topic is not None:
        flags |= 0x04 | (connect.will_qos << 3) | (0x20 if connect.will_retain else 0)
        payload += _field(connect.will_topic.encode()) + _field(connect.will_message)
    if connect.username is not None:
        flags |= 0x80
        payload += _field(connect.username.encode())
    if connect.password is not None:
        flags |= 0x40
        payload += _field(connect.password)
    header = _field(connect.protocol_name.encode()) + struct.pack("!BBH", connect.level, flags, connect.keepalive)
    body = header + payload
    return b"\x10" + _remaining_length(len(body)) + body


def connack(code: int) -> bytes:
    """Return a CONNACK packet with return code `code` (no session present)."""
    return bytes((0x20, 0x02, 0x00, code))


async def _read_connect(reader: asyncio.StreamReader) -> bytes:
    """Read the first packet, which must be a CONNECT; return its body."""
    first = await reader.readexactly(1)
    if first[0] != 0x10:
        raise PacketError(f"first packet is not a CONNECT (type byte {first[0]:#04x})")
    size, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        raise PacketError("malformed remaining length")
    if size > MAX_CONNECT_BYTES:
        raise PacketError(f"CONNECT of {size} bytes is too large")
    return await reader.readexactly(size)


class AuthFront:
    """Serve every module's port 8883 from one asyncio thread: `start()`/`stop()`, `stats()` per module."""

    def __init__(
        self,
        routes: Sequence[FrontRoute],
        certs: CertPaths,
        on_connection: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self.certs = certs
        self._on_connection = on_connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._stats: Counter[tuple[str, str]] = Counter()
        self._open: Counter[str] = Counter()  # accepted connections now piped, per module
        self._warned: Counter[tuple[str, str]] = Counter()

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.certs.server_cert), str(self.certs.server_key))
        return context

    def start(self, timeout_s: float = 10.0) -> AuthFront:
        """Listen on every module's address; return once all accept connections, or raise FrontError."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_handshake_errors)
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="edgehub-front", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    async def _listen(self) -> None:
        context = self._ssl_context()
        for route in self.routes:
            try:
                server = await asyncio.start_server(
                    functools.partial(self._accept, route),
                    route.listen_host,
                    route.listen_port,
                    ssl=context,
                    ssl_handshake_timeout=CONNECT_TIMEOUT_S,
                    reuse_address=True,
                    limit=_CHUNK,
                )
            except OSError as err:
                raise FrontError(
                    f"cannot listen on {route.listen_host}:{route.listen_port} for {route.identity.module}: "
                    f"{err.strerror} (another stand-in may use this address; pick another ip_base or module host)"
                ) from err
            self._servers.append(server)
            logger.debug("Front of %s listening on %s:%d", route.identity.module, route.listen_host, route.listen_port)

    def running(self) -> bool:
        """Return whether the front's thread serves."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def native_thread_id(self) -> int | None:
        """Return the OS id of the front's thread (its CPU time is in /proc/self/task/<id>/stat)."""
        thread = self._thread
        return thread.native_id if thread is not None else None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listeners and every connection, then end the thread."""
        loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout_s)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if not thread.is_alive():
            loop.close()

    async def _close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    def stats(self) -> dict[str, dict[str, int]]:
        """Return per module how many connections were accepted and refused."""
        with self._lock:
            found: dict[str, dict[str, int]] = {route.identity.module: {} for route in self.routes}
            for (module, outcome), count in self._stats.items():
                found[module][outcome] = count
        return found

    def connected(self, module: str) -> bool:
        """Return whether `module` has an accepted connection open now (edgeHub's "client connected")."""
        with self._lock:
            return self._open[module] > 0

    def _count(self, module: str, outcome: str) -> None:
        with self._lock:
            self._stats[(module, outcome)] += 1

    # -- one connection -------------------------------------------------------------------------

    def _accept(self, route: FrontRoute, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(route, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, route: FrontRoute, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        module = route.identity.module
        peer = writer.get_extra_info("peername")
        upstream: asyncio.StreamWriter | None = None
        accepted = False
        try:
            try:
                connect = parse_connect(await asyncio.wait_for(_read_connect(reader), CONNECT_TIMEOUT_S))
            except (PacketError, TimeoutError, asyncio.IncompleteReadError) as err:
                self._refused(module, peer, f"no valid CONNECT ({err or type(err).__name__})")
                return  # MQTT 3.1.1: close without a CONNACK
            if connect.protocol_name != "MQTT" or connect.level != _MQTT_LEVEL_311:
                self._refused(module, peer, f"protocol {connect.protocol_name} level {connect.level}")
                await _answer(writer, CONNACK_UNACCEPTABLE_PROTOCOL)
                return
            reason = check_connect(route.identity, connect.client_id, connect.username, connect.password, time.time())
            if reason is not None:
                self._refused(module, peer, reason)
                await _answer(writer, CONNACK_NOT_AUTHORIZED)
                return
            try:
                broker_reader, upstream = await asyncio.open_connection(
                    route.broker_host, route.broker_port, limit=_CHUNK
                )
            except OSError as err:
                # Like edgeHub when it cannot set up a connection: the SDK retries a 3.
                logger.warning("Front of %s cannot reach its broker (%s); answered server unavailable", module, err)
                await _answer(writer, CONNACK_SERVER_UNAVAILABLE)
                return
            upstream.write(
                encode_connect(
                    replace(connect, username=route.broker_username, password=route.broker_password.encode())
                )
            )
            self._count(module, "accepted")
            with self._lock:
                self._open[module] += 1
            accepted = True
            self._connection(module, True)
            logger.debug("Front of %s accepted %s from %s", module, connect.client_id, peer)
            await self._pipe_until_expiry(connect, reader, writer, broker_reader, upstream)
        except (ConnectionError, ssl.SSLError, OSError) as err:
            logger.debug("Front connection of %s from %s ended: %s", module, peer, err)
        finally:
            if accepted:
                with self._lock:
                    self._open[module] -= 1
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()
            if accepted:
                self._connection(module, False)

    def _connection(self, module: str, opened: bool) -> None:
        """Tell the listener that a module connection opened or closed; its failure never ends the connection."""
        if self._on_connection is None:
            return
        try:
            self._on_connection(module, opened)
        except Exception:
            logger.exception("Connection listener failed for %s", module)

    async def _pipe_until_expiry(
        self,
        connect: Connect,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        broker_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        """Pipe both ways until either side closes or the client's token expires."""
        expiry_s = _token_expiry(connect.password)
        pipes = {
            asyncio.ensure_future(_pipe(reader, upstream)),
            asyncio.ensure_future(_pipe(broker_reader, writer)),
        }
        timeout = None if expiry_s is None else max(0.0, expiry_s - time.time())
        try:
            done, _ = await asyncio.wait(pipes, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                logger.info("Front closed %s's connection: its SAS token expired", connect.client_id)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    def _refused(self, module: str, peer: object, reason: str) -> None:
        self._count(module, "refused")
        kind = reason.split(" (")[0].split(",")[0]
        with self._lock:
            self._warned[(module, kind)] += 1
            count = self._warned[(module, kind)]
        level = logging.WARNING if count <= _WARN_LIMIT else logging.DEBUG
        logger.log(level, "Refused a connection to %s's broker from %s: %s", module, peer, reason)


async def _answer(writer: asyncio.StreamWriter, code: int) -> None:
    """Send a refusing CONNACK and let it leave before the connection is closed."""
    writer.write(connack(code))
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        await asyncio.wait_for(writer.drain(), CONNECT_TIMEOUT_S)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until the reader's end of stream."""
    while True:
        data = await reader.read(_CHUNK)
        if not data:
            return
        writer.write(data)
        await writer.drain()


def _token_expiry(password: bytes | None) -> int | None:
    """Return the `se` of an accepted token (checked well-formed by then)."""
    if password is None:
        return None
    for item in password.decode("utf-8", errors="replace").split("&"):
        name, _, value = item.partition("=")
        if name == "se" and value.isdigit():
            return int(value)
    return None


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Log a client's failed TLS handshake briefly (a port scan, a client without our CA) instead of a traceback."""
    error = context.get("exception")
    if isinstance(error, ssl.SSLError | ConnectionError | TimeoutError):
        logger.debug("Front: %s (%s)", context.get("message"), error)
        return
    loop.default_exception_handler(context)
