"""The stand-in's control channel for operators: a unix socket in its state dir, owner only.

`edgefleet hub module-twin show|update` and `edgefleet hub invoke-module-method` talk to a
running stand-in through `<state_dir>/control.sock`: the socket is 0600 inside the 0700 state
dir, and the server also checks the peer's uid (`SO_PEERCRED`): only the stand-in's own user
(or root) gets in, and nothing listens on the network. One JSON request per connection, one
JSON answer: `{"status": <HTTP-like status>, "body": ...}`, errors with `{"message": ...}` in
`body` as edgeHub words them.

Unix socket paths are limited to 107 bytes; a longer state dir path is reached through
`/proc/self/fd/<dir fd>/control.sock`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from edgefleet.errors import EdgefleetError
from edgehub.methods import MethodError, MethodResult
from edgehub.twins import TwinError

logger = logging.getLogger(__name__)

__all__ = ["CONTROL_SOCKET", "ControlError", "ControlOps", "ControlServer", "call_standin"]

CONTROL_SOCKET = "control.sock"
MAX_REQUEST_BYTES = 1024 * 1024
# The server answers a method call within its response timeout; this is on top, for the rest.
_ANSWER_MARGIN_S = 10.0
_MAX_UNIX_PATH = 100


class ControlError(EdgefleetError):
    """Raise when the CLI cannot reach the stand-in or the stand-in refuses a request."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ControlOps(Protocol):
    """What the control channel can ask of a running stand-in."""

    def module_twin(self, module: str) -> dict[str, Any]: ...

    def update_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    def invoke_method(
        self, module: str, name: str, payload: Any, *, response_timeout_s: float, connect_timeout_s: float
    ) -> MethodResult: ...


@contextlib.contextmanager
def _unix_address(path: Path) -> Iterator[str]:
    """Yield an address for `path` short enough for a unix socket (through a directory fd if needed)."""
    if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        pid, uid, _ = struct.unpack("3i", self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (os.geteuid(), 0):
            logger.warning("Control channel refused process %d of uid %d", pid, uid)
            return
        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        status, body = self.server.control.answer(line)
        self.wfile.write(json.dumps({"status": status, "body": body}).encode("utf-8") + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    control: ControlServer


class ControlServer:
    """Serve the operator's twin and method requests on `<state_dir>/control.sock`."""

    def __init__(self, state_dir: Path, ops: ControlOps) -> None:
        self.path = Path(state_dir) / CONTROL_SOCKET
        self.ops = ops
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        """Listen on the socket (replacing one an earlier run left behind); raise OSError if it cannot."""
        self.path.unlink(missing_ok=True)
        with _unix_address(self.path) as address:
            server = _Server(address, _Handler, bind_and_activate=False)
            try:
                server.server_bind()
                # Before listen(): until then a connect is refused, so no one gets in while it is wider.
                os.chmod(self.path, 0o600)
                server.server_activate()
            except BaseException:
                server.server_close()
                raise
        server.control = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edgehub-control", daemon=True
        )
        self._thread.start()
        logger.info("Operator control channel on %s", self.path)
        return self

    def stop(self) -> None:
        """Stop listening and remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self.path.unlink(missing_ok=True)

    def answer(self, line: bytes) -> tuple[int, Any]:
        """Return the status and body answering one request line."""
        if len(line) > MAX_REQUEST_BYTES:
            return 413, {"message": f"a request is at most {MAX_REQUEST_BYTES} bytes"}
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict) or not isinstance(request.get("module"), str):
                raise ValueError("a request is a JSON object naming a module")
        except ValueError as err:
            return 400, {"message": f"bad request: {err}"}
        op, module = request.get("op"), request["module"]
        try:
            if op == "twin.show":
                return 200, self.ops.module_twin(module)
            if op == "twin.update":
                desired = request.get("desired")
                if not isinstance(desired, dict):
                    return 400, {"message": "a desired patch must be a JSON object"}
                return 200, self.ops.update_desired(module, desired)
            if op == "method.invoke":
                name = request.get("method")
                if not isinstance(name, str) or not name:
                    return 400, {"message": "a method call needs a method name"}
                result = self.ops.invoke_method(
                    module,
                    name,
                    request.get("payload"),
                    response_timeout_s=float(request.get("timeout", 30)),
                    connect_timeout_s=float(request.get("connect_timeout", 0)),
                )
                return 200, result.document()
        except TwinError as err:
            return 404, {"message": str(err)}
        except MethodError as err:
            return err.status, {"message": str(err)}
        except (TypeError, ValueError) as err:
            return 400, {"message": f"bad request: {err}"}
        return 400, {"message": f"unknown operation {op!r}"}


def call_standin(state_dir: Path, request: Mapping[str, Any], timeout_s: float = 30.0) -> Any:
    """Send one request to the stand-in running with `state_dir`; return the answer's body or raise ControlError."""
    path = Path(state_dir) / CONTROL_SOCKET
    start_hint = f"start it (`edgefleet edgehub --state-dir {state_dir}`, `edgefleet up`) or pass its --state-dir"
    if not path.exists():
        raise ControlError(f"no stand-in is running with state dir {state_dir} (no {path}): {start_hint}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s + _ANSWER_MARGIN_S)
        try:
            with _unix_address(path) as address:
                sock.connect(address)
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline()
        except PermissionError:
            raise ControlError(f"no permission to use {path}: run as the stand-in's user (or root)") from None
        except ConnectionRefusedError:
            raise ControlError(f"the stand-in with state dir {state_dir} is not running: {start_hint}") from None
        except TimeoutError:
            raise ControlError(f"the stand-in with state dir {state_dir} did not answer in time") from None
        except OSError as err:
            raise ControlError(f"cannot talk to the stand-in on {path}: {err.strerror or err}") from None
    if not line:
        raise ControlError(f"the stand-in on {path} closed the connection without an answer (another user's?)")
    answer = json.loads(line)
    status, body = answer["status"], answer["body"]
    if status != 200:
        message = body.get("message", body) if isinstance(body, dict) else body
        raise ControlError(str(message), status)
    return body
