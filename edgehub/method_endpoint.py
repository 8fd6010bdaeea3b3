"""edgeHub's HTTPS endpoint for module-to-module direct methods, on port 443 of each module's gateway address.

`IoTHubModuleClient.invoke_method(method_params, device_id, module_id)` (azure-iot-device 2.x,
`iothub/pipeline/pipeline_stages_iothub_http.py` and `common/http_transport.py`) POSTs
`https://<GatewayHostName>/twins/<device>/modules/<module>/methods?api-version=...` with the
method params as JSON body (`methodName`, `payload`, `responseTimeoutInSeconds`,
`connectTimeoutInSeconds`), its SAS token in `Authorization` and `<device>/<module>` of the
caller in `x-ms-edge-moduleId`; it verifies the server against `EdgeModuleCACertificateFile`.
The URL has no port: the SDK always uses 443, so the stand-in listens on 443 of every module's
address (binding a port below 1024 needs root, CAP_NET_BIND_SERVICE or a lowered
`net.ipv4.ip_unprivileged_port_start`, which Docker sets to 0 inside containers).

Answers follow edgeHub's `TwinsController` (Azure/iotedge, edge-hub/core/src/
Microsoft.Azure.Devices.Edge.Hub.Http/controllers/TwinsController.cs): 200 with
`{"status": <module's status>, "payload": <module's payload>}`; otherwise an HTTP error with
`{"message": ...}`: 400 for a missing or malformed `x-ms-edge-moduleId` or body, 401 for a caller
of another device or whose token does not authenticate it, 404 for a target that is not
connected ("Client <device>/<module> not found"), 504 when it does not answer in time.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from edgefleet.errors import EdgefleetError
from edgehub.auth import ModuleIdentity, check_connect, sas_username
from edgehub.methods import DEFAULT_RESPONSE_TIMEOUT_S, MethodError, MethodInvoker

if TYPE_CHECKING:
    import socket

    from edgehub.certs import CertPaths

logger = logging.getLogger(__name__)

__all__ = ["METHOD_PORT", "EndpointPermissionError", "MethodEndpoint", "MethodEndpointError"]

METHOD_PORT = 443  # the SDK's URL names no port
EDGE_MODULE_HEADER = "x-ms-edge-moduleId"
# IoT Hub limits a method payload to 128 KB; the body adds the method's name and timeouts.
MAX_BODY_BYTES = 160 * 1024
# A client must finish its TLS handshake and send its request within this (a slow or idle one is dropped).
SOCKET_TIMEOUT_S = 10.0
_WARN_LIMIT = 5


class MethodEndpointError(EdgefleetError):
    """Raise when the HTTPS method endpoint cannot listen."""


class EndpointPermissionError(MethodEndpointError):
    """Raise when the process may not bind the endpoint's port (below 1024 without the privilege)."""


class _Server(ThreadingHTTPServer):
    """One address's HTTPS server: the TLS handshake runs in the request's own thread."""

    daemon_threads = True
    endpoint: MethodEndpoint
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(SOCKET_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as err:
            logger.debug("Method endpoint: TLS handshake with %s failed: %s", client_address, err)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    """Serve `POST /twins/{device}/modules/{module}/methods` as edgeHub does."""

    server: _Server
    server_version = "edgefleet-edgehub"

    def do_POST(self) -> None:
        status, body = self.server.endpoint.handle(
            self.path, {key.lower(): value for key, value in self.headers.items()}, self._body()
        )
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes | None:
        """Return the request body, or None when it is missing or too large."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        if not 0 <= length <= MAX_BODY_BYTES:
            return None
        return self.rfile.read(length)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Method endpoint %s: " + format, self.client_address, *args)


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"message": message}


class MethodEndpoint:
    """Serve module-to-module direct methods over HTTPS on `port` of each module's address."""

    def __init__(
        self,
        hosts: Sequence[str],
        port: int,
        certs: CertPaths,
        edge_device: str,
        identities: Mapping[str, ModuleIdentity],
        invoker: MethodInvoker,
    ) -> None:
        self.hosts = tuple(dict.fromkeys(hosts))
        self.port = port
        self.certs = certs
        self.edge_device = edge_device
        self.identities = dict(identities)
        self.invoker = invoker
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._warned: Counter[str] = Counter()

    def start(self) -> MethodEndpoint:
        """Listen on every address; raise EndpointPermissionError or MethodEndpointError when one cannot be bound."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.certs.server_cert), str(self.certs.server_key))
        try:
            for host in self.hosts:
                try:
                    server = _Server((host, self.port), _Handler)
                except OSError as err:
                    where = f"{host}:{self.port}"
                    if err.errno == errno.EACCES:
                        raise EndpointPermissionError(
                            f"cannot listen on {where} for module-to-module direct methods: permission denied "
                            "(ports below 1024 need root, CAP_NET_BIND_SERVICE or a lower "
                            "net.ipv4.ip_unprivileged_port_start; the SDK always calls port 443)"
                        ) from None
                    raise MethodEndpointError(
                        f"cannot listen on {where} for module-to-module direct methods: {err.strerror} "
                        "(another stand-in may use this address; pick another ip_base or module host)"
                    ) from None
                server.endpoint, server.context = self, context
                self._servers.append(server)
                thread = threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edgehub-methods", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        logger.info("Module-to-module direct methods served on port %d of %s", self.port, ", ".join(self.hosts))
        return self

    def stop(self) -> None:
        """Stop listening (calls in progress end with the process or their timeout)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []

    def running(self) -> bool:
        """Return whether every listener's thread serves."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def stats(self) -> dict[str, int]:
        """Return counters: calls answered, refused (401), bad requests, not found, timed out."""
        with self._lock:
            return dict(self._stats)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._stats[outcome] += 1

    def _refuse(self, status: int, message: str) -> tuple[int, dict[str, Any]]:
        outcome = {400: "bad_request", 401: "refused", 404: "not_found", 504: "timed_out"}.get(status, "errors")
        self._count(outcome)
        with self._lock:
            self._warned[outcome] += 1
            count = self._warned[outcome]
        if count <= _WARN_LIMIT:
            logger.warning("Method endpoint answered %d: %s", status, message)
        return _error(status, message)

    # -- one request --------------------------------------------------------------------------

    def handle(self, path: str, headers: Mapping[str, str], body: bytes | None) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and JSON body answering one POST (headers with lower-case names)."""
        route, _, _ = path.partition("?")
        parts = [urllib.parse.unquote_plus(part) for part in route.strip("/").split("/")]
        if len(parts) == 5 and parts[0] == "twins" and parts[2] == "modules" and parts[4] == "methods":
            target = f"{parts[1]}/{parts[3]}"
        elif len(parts) == 3 and parts[0] == "twins" and parts[2] == "methods":
            target = parts[1]
        else:
            return self._refuse(404, f"no such resource: POST {route}")
        caller = self._authenticate(headers)
        if isinstance(caller, tuple):
            return caller
        if body is None:
            return self._refuse(400, f"a method call needs a JSON body of at most {MAX_BODY_BYTES} bytes")
        try:
            request = json.loads(body.decode("utf-8"))
        except ValueError:
            return self._refuse(400, "the method call's body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("methodName"), str) or not request["methodName"]:
            return self._refuse(400, "the method call's body needs a methodName")
        try:
            response_timeout = _seconds(request, "responseTimeoutInSeconds", DEFAULT_RESPONSE_TIMEOUT_S)
            connect_timeout = _seconds(request, "connectTimeoutInSeconds", 0.0)
        except ValueError as err:
            return self._refuse(400, str(err))
        device, _, module = target.partition("/")
        if device != self.edge_device or not module:
            return self._refuse(404, f"Client {target} not found")
        logger.debug("Module %s calls %s on %s", caller, request["methodName"], module)
        try:
            result = self.invoker.invoke(
                module,
                request["methodName"],
                request.get("payload"),
                response_timeout_s=response_timeout or DEFAULT_RESPONSE_TIMEOUT_S,
                connect_timeout_s=connect_timeout,
            )
        except MethodError as err:
            return self._refuse(err.status, str(err))
        self._count("answered")
        return 200, result.document()

    def _authenticate(self, headers: Mapping[str, str]) -> str | tuple[int, dict[str, Any]]:
        """Return the calling module's `<device>/<module>`, or the error answer refusing it."""
        actor = headers.get(EDGE_MODULE_HEADER.lower(), "")
        device, sep, module = actor.partition("/")
        if not sep or not device or not module or "/" in module:
            return self._refuse(400, f"Invalid header value for {EDGE_MODULE_HEADER}")
        if device != self.edge_device:
            return self._refuse(401, "Only modules on the same device can invoke DirectMethods")
        identity = self.identities.get(module)
        if identity is None:
            return self._refuse(401, f"unknown module {actor}")
        token = headers.get("authorization")
        reason = check_connect(
            identity,
            actor,
            sas_username(identity.hub_hostname, device, module),
            token.encode("utf-8") if token is not None else None,
            time.time(),
        )
        if reason is not None:
            return self._refuse(401, f"cannot authenticate {actor}: {reason}")
        return actor


def _seconds(request: Mapping[str, Any], key: str, default: float) -> float:
    """Return a timeout of the method call in seconds (absent or null: `default`); raise ValueError if bad."""
    value = request.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a number of seconds, not {value!r}")
    return float(value)
