"""The offline edgeHub stand-in: certificates, one Mosquitto per module and the router.

Why one broker per module: module-twin and direct-method topics (`$iothub/twin/...`,
`$iothub/methods/...`) name no module, so on one shared broker a twin GET from `sensor` and
one from `inference` look the same and every answer reaches every module. Each module
therefore gets its own Mosquitto process with one TLS listener on port 8883 (the SDK always
connects to 8883) bound to the module's own loopback address (`<ip_base>.10`, `.11`, ...), and
its connection string names that address as `GatewayHostName`. The router connects to every
broker; the broker a message arrives on tells it who sent it.

One Mosquitto with a `mount_point <module>/` listener per module would be lighter, but
Mosquitto 2.0.0-2.0.11 (2.0.11 is Debian bookworm's version) does not strip the mount point
from outgoing topics (eclipse-mosquitto/mosquitto#2244, fixed in 2.0.12): the SDK then
receives `sensor/$iothub/twin/res/200/?$rid=1` and `sensor/devices/.../inputs/...`, matches
neither, and `get_twin()` never returns. Separate processes work with every Mosquitto 2.x.

Modules connect exactly as on a device, with `IoTHubModuleClient.create_from_edge_environment()`,
through the SDK's documented development variables `EdgeHubConnectionString` and
`EdgeModuleCACertificateFile` (see `module_environment`). Like edgeHub, the stand-in checks their
SAS tokens at CONNECT: port 8883 is served by `edgehub.front`, which refuses anonymous clients,
wrong keys, expired tokens and a module connecting to another module's broker (CONNACK 5), and
passes accepted connections to the module's Mosquitto, which listens on a loopback port only,
refuses anonymous clients and limits each identity to its own topics (`acl_file`). Module keys
are random (`<state_dir>/secrets/module-keys`, created once) or the operator's (`module_keys_file`).
The router connects to each Mosquitto directly, with its own internal credentials.

The state dir (0700) holds the CA's and the server's private keys (0600). Modules get the CA
certificate alone, published into `ca_export_dir` (default `<state_dir>/public`; under Docker
Compose a volume of its own that modules mount read-only), never the state dir.

Store and forward, as edgeHub: a message routed to a module that is not connected is held by
the router and delivered when the module connects (the front reports connections), in order,
unless it is older than `ttl_s` (the manifest's `storeAndForwardConfiguration.timeToLiveSecs`,
or the route's own `timeToLiveSecs`); `$upstream` messages are held while the upstream is not
healthy. Held messages are journaled in the state dir and survive a restart (`edgehub.store`).
Each module's broker keeps a persistent session for the module's client id with its inputs
subscribed, made at start before the module ever connects: a message published while the module
is connecting, or leaving, waits in that session instead of being dropped by Mosquitto.

One stand-in at a time owns a state dir: `start` locks `<state_dir>/standin.lock` (flock; the
kernel releases it when the process ends, even by kill -9) and a second stand-in refuses to start,
naming the pid that holds it.

Twins are kept in `<state_dir>/twins` (`edgehub.twins`: they survive a restart). Modules call
each other's direct methods over HTTPS on port 443 of their gateway address
(`edgehub.method_endpoint`, off with `method_port=0`); without the privilege to bind port 443
the stand-in runs on without it and logs how to grant it. Operators reach a running stand-in
through `<state_dir>/control.sock` (`edgehub.control`, `edgefleet hub ...`).

`$upstream` goes to the `Upstream` the caller passes in (`edgehub.upstream`): the stand-in
routes, the caller decides where the local IoT Hub is and closes it after the stand-in stopped.
"""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import private_dir, write_atomic
from edgefleet.health import touch_health
from edgefleet.journal import Journal, JournalError
from edgefleet.routes import Route
from edgefleet.topics import EVENTS_SUBSCRIPTION, METHOD_RESPONSES_SUBSCRIPTION, TWIN_REQUEST_SUBSCRIPTIONS
from edgefleet.watchdog import UNHEALTHY_EXIT_CODE, UnhealthyClock
from edgehub.auth import KeysError, ModuleIdentity, ensure_module_keys, read_keys_file
from edgehub.broker import Broker, BrokerAuth, BrokerKeeper, Listener, mosquitto_password_hash
from edgehub.certs import CA_FILE_NAME, CertPaths, ensure_certs, publish_ca_certificate
from edgehub.control import ControlServer
from edgehub.front import AuthFront, FrontError, FrontRoute
from edgehub.method_endpoint import METHOD_PORT, EndpointPermissionError, MethodEndpoint, MethodEndpointError
from edgehub.methods import DEFAULT_RESPONSE_TIMEOUT_S, MethodInvoker, MethodResult
from edgehub.router import BrokerAddress, Router
from edgehub.store import DEFAULT_TTL_S
from edgehub.twins import TWINS_DIR, TwinError, TwinStore
from edgehub.upstream import Upstream

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HUB_HOSTNAME",
    "DEFAULT_IP_BASE",
    "GATEWAY_PORT",
    "UNHEALTHY_EXIT_S",
    "EdgeHubStandIn",
    "StandInError",
    "StateDirLock",
    "check_ca_export_dir",
    "check_ip_base",
    "check_module_hosts",
    "check_name",
    "run_standin",
]

# The Python SDK hard-codes port 8883 for MQTT over TLS: modules differ by address, not port.
GATEWAY_PORT = 8883
DEFAULT_IP_BASE = "127.0.77"
# The health file is touched and the exit decision taken this often; dead brokers are restarted
# sooner, by the stand-in's `BrokerKeeper`.
HEALTH_INTERVAL_S = 1.0
# As the modules' UNHEALTHY_EXIT_S: longer than compose's health check (3 x 5 s) and a sink restart.
UNHEALTHY_EXIT_S = 120.0
FIRST_HOST = 10  # module i listens on <ip_base>.(10 + i)
DEFAULT_HUB_HOSTNAME = "edgefleet-local.azure-devices.net"  # only appears in SAS token audiences
_MODULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_IP_BASE = re.compile(r"127\.\d{1,3}\.\d{1,3}")
# Each module's Mosquitto listens here only (a free port per broker); the front and the router connect to it.
BROKER_HOST = "127.0.0.1"
ROUTER_USER = "edgehub-router"
LOCK_FILE_NAME = "standin.lock"
PRIME_TIMEOUT_S = 10.0


class StandInError(EdgefleetError):
    """Raise when the stand-in is configured wrongly or cannot start."""


class StateDirLock:
    """An exclusive lock on a state dir: `<state_dir>/standin.lock`, flock'ed, holding the owner's pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise StandInError naming the pid that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise StandInError(
                f"another edgeHub stand-in (pid {holder}) uses the state dir {self.path.parent}: "
                "stop it, or pass another --state-dir (EDGEHUB_STATE_DIR)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        # The pid is for the message above only: the flock, not the file, is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class EdgeHubStandIn:
    """Run the local edgeHub: `start()`/`stop()` or a `with` block; `module_environment()` for modules."""

    def __init__(
        self,
        state_dir: Path,
        edge_device: str,
        modules: Sequence[str],
        routes: Sequence[Route],
        desired: Mapping[str, Mapping[str, Any]],
        *,
        upstream: Upstream,
        ip_base: str = DEFAULT_IP_BASE,
        hub_hostname: str = DEFAULT_HUB_HOSTNAME,
        ready_timeout_s: float = 15.0,
        module_hosts: Mapping[str, str] | None = None,
        ca_export_dir: Path | None = None,
        module_keys_file: Path | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        method_port: int = METHOD_PORT,
    ) -> None:
        self.state_dir = Path(state_dir)
        if ttl_s <= 0:
            raise StandInError(f"the store-and-forward time to live must be positive seconds, not {ttl_s}")
        self.ttl_s = ttl_s
        self._state_lock: StateDirLock | None = None
        self.ca_export_dir = check_ca_export_dir(
            self.state_dir, Path(ca_export_dir) if ca_export_dir is not None else self.state_dir / "public"
        )
        self.edge_device = check_name(edge_device, "edge device id")
        self.modules = tuple(check_name(module, "module name") for module in modules)
        if not self.modules:
            raise StandInError("the stand-in needs at least one module")
        if len(set(self.modules)) != len(self.modules):
            raise StandInError(f"module names must be unique: {', '.join(self.modules)}")
        if len(self.modules) > 255 - FIRST_HOST:
            raise StandInError(f"at most {255 - FIRST_HOST} modules fit in one IP block")
        unknown = sorted(set(desired) - set(self.modules))
        if unknown:
            raise StandInError(f"desired properties for module(s) the stand-in does not run: {', '.join(unknown)}")
        self.ip_base = check_ip_base(ip_base)
        # Explicit addresses (e.g. one per container network under Docker Compose) win over ip_base.
        self.module_hosts = check_module_hosts(module_hosts or {}, self.modules)
        self.routes = tuple(routes)
        self.desired = {module: dict(props) for module, props in desired.items()}
        self.upstream = upstream
        self.hub_hostname = hub_hostname
        self.ready_timeout_s = ready_timeout_s
        self._brokers: list[Broker] = []
        self._keeper: BrokerKeeper | None = None
        self._router: Router | None = None
        self._front: AuthFront | None = None
        self._invoker: MethodInvoker | None = None
        self._endpoint: MethodEndpoint | None = None
        self._control: ControlServer | None = None
        if not 0 <= method_port <= 65535:
            raise StandInError(f"method_port {method_port} must be a TCP port (443 for the SDK; 0: off)")
        self.method_port = method_port
        self.certs: CertPaths | None = None
        self.module_keys_file = module_keys_file
        # The operator's keys are checked now, so that a mistake stops the start with how to fix it.
        self._keys: dict[str, bytes] | None = self._read_keys() if module_keys_file is not None else None
        for route in self.routes:
            for module in (route.source.module, route.sink.module):
                if module is not None and module not in self.modules:
                    logger.warning("Route %s names module %r, which the stand-in does not run", route.name, module)

    # -- addresses and module environment -------------------------------------------------------

    def module_host(self, module: str) -> str:
        """Return the address of a module's broker (its `GatewayHostName`)."""
        if module in self.module_hosts:
            return self.module_hosts[module]
        try:
            index = self.modules.index(module)
        except ValueError:
            raise StandInError(f"unknown module {module!r}; the stand-in runs {', '.join(self.modules)}") from None
        return f"{self.ip_base}.{FIRST_HOST + index}"

    @property
    def ca_file(self) -> Path:
        """Return the published copy of the CA certificate modules must trust (exists once started)."""
        return self.ca_export_dir / CA_FILE_NAME

    def _read_keys(self) -> dict[str, bytes]:
        """Return every module's key: the operator's file, else the stand-in's own (created once)."""
        try:
            if self.module_keys_file is not None:
                return read_keys_file(self.module_keys_file, self.modules)
            return ensure_module_keys(self.state_dir / "secrets", self.modules)
        except KeysError as err:
            raise StandInError(str(err)) from None

    def module_identity(self, module: str) -> ModuleIdentity:
        """Return who may connect to a module's broker, with the module's key."""
        if module not in self.modules:
            raise StandInError(f"unknown module {module!r}; the stand-in runs {', '.join(self.modules)}")
        if self._keys is None:
            self._keys = self._read_keys()
        return ModuleIdentity(self.hub_hostname, self.edge_device, module, self._keys[module])

    def module_environment(self, module: str) -> dict[str, str]:
        """Return the environment variables a module process needs to reach its edgeHub (its key included)."""
        key = base64.b64encode(self.module_identity(module).key).decode()
        connection_string = ";".join(
            [
                f"HostName={self.hub_hostname}",
                f"GatewayHostName={self.module_host(module)}",
                f"DeviceId={self.edge_device}",
                f"ModuleId={module}",
                f"SharedAccessKey={key}",
            ]
        )
        return {"EdgeHubConnectionString": connection_string, "EdgeModuleCACertificateFile": str(self.ca_file)}

    def write_env_files(self) -> dict[str, Path]:
        """Write `<state_dir>/modules/<module>.env` (KEY="value" lines, 0600: they hold keys); return the paths."""
        folder = private_dir(self.state_dir / "modules")
        paths = {}
        for module in self.modules:
            lines = [f'{key}="{value}"' for key, value in self.module_environment(module).items()]
            path = folder / f"{module}.env"
            write_atomic(path, ("\n".join(lines) + "\n").encode())
            paths[module] = path
        return paths

    # -- running parts --------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """Return the running router (twin patches, direct methods, stats)."""
        if self._router is None:
            raise StandInError("the stand-in is not running")
        return self._router

    def start(self) -> EdgeHubStandIn:
        """Generate certificates, start the brokers, the front and the router; return when the router is subscribed."""
        if self._router is not None:
            return self
        try:
            hosts = [self.module_host(module) for module in self.modules]
            try:
                private_dir(self.state_dir)
                self._state_lock = StateDirLock(self.state_dir).acquire()
            except OSError as err:
                raise StandInError(f"cannot use the state dir {self.state_dir} ({err}): pass a writable one") from err
            identities = [self.module_identity(module) for module in self.modules]
            self.certs = ensure_certs(self.state_dir, ips=hosts, hostnames=["localhost"])
            publish_ca_certificate(self.certs.ca_cert, self.ca_export_dir)
            broker_dir = private_dir(self.state_dir / "brokers")
            # Internal passwords, new at every start: only this process and its brokers know them.
            router_password = secrets.token_urlsafe(32)
            routes, addresses = [], {}
            for identity, host in zip(identities, hosts, strict=True):
                module, port, password = identity.module, _free_loopback_port(), secrets.token_urlsafe(32)
                auth = self._write_broker_auth(broker_dir, module, password, router_password)
                broker = Broker(broker_dir, module, [Listener(BROKER_HOST, port)], persistent=True, auth=auth)
                self._brokers.append(broker)
                broker.start()
                self._prime_session(identity, port, password)
                routes.append(
                    FrontRoute(identity, host, GATEWAY_PORT, BROKER_HOST, port, _module_user(module), password)
                )
                addresses[module] = BrokerAddress(BROKER_HOST, port, username=ROUTER_USER, password=router_password)
            self._keeper = BrokerKeeper(self._brokers).start()
            try:
                twins = TwinStore(self.modules, self.desired, self.state_dir / TWINS_DIR)
            except TwinError as err:
                raise StandInError(str(err)) from None
            # The router first: it hears of every module connection the front accepts.
            router = self._router = Router(
                addresses,
                self.edge_device,
                self.routes,
                self.desired,
                self.upstream,
                hub_name=self.hub_hostname,
                journal=self._open_journal(),
                ttl_s=self.ttl_s,
                hold_for_absent_modules=True,
                upstream_ready=self.upstream.healthy,
                twins=twins,
            ).start()
            try:
                self._front = AuthFront(routes, self.certs, on_connection=self._router.module_connection).start()
            except FrontError as err:
                raise StandInError(str(err)) from None
            if not self._router.wait_ready(self.ready_timeout_s):
                raise StandInError(f"the router could not subscribe on every module broker in {self.ready_timeout_s} s")
            front = self._front
            self._invoker = MethodInvoker(self.edge_device, self.modules, router.invoke_method, front.connected)
            self._start_method_endpoint(hosts, identities)
            try:
                self._control = ControlServer(self.state_dir, self).start()
            except OSError as err:
                raise StandInError(f"cannot open the control socket in {self.state_dir} ({err})") from None
        except BaseException:
            self.stop()
            raise
        logger.info(
            "edgeHub stand-in for %s running: %s",
            self.edge_device,
            ", ".join(f"{module}@{host}:{GATEWAY_PORT}" for module, host in zip(self.modules, hosts, strict=True)),
        )
        return self

    def _prime_session(self, identity: ModuleIdentity, port: int, password: str) -> None:
        """Give the module a persistent session with its inputs subscribed, as the SDK makes it.

        Mosquitto drops a message for a client it has no session of. The router holds messages
        for an absent module, but one published while the module is connecting (before its
        SUBSCRIBE) or leaving would be lost: with this session it waits for the module instead.
        Done before the front listens, so the module is not connected yet (its session is only renewed).
        """
        done = threading.Event()
        failure: list[str] = []
        topic = f"devices/{self.edge_device}/modules/{identity.module}/inputs/#"  # the SDK's own filter

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
            if rc != 0:
                failure.append(mqtt.connack_string(rc))
                done.set()
            else:
                client.subscribe(topic, qos=1)

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, granted: Any) -> None:
            if any(qos == 0x80 for qos in granted):
                failure.append(f"subscription to {topic} refused")
            done.set()

        client = mqtt.Client(client_id=identity.client_id, clean_session=False, protocol=mqtt.MQTTv311)
        client.username_pw_set(_module_user(identity.module), password)
        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        try:
            client.connect(BROKER_HOST, port, keepalive=30)
            client.loop_start()
            if not done.wait(PRIME_TIMEOUT_S) or failure:
                raise StandInError(
                    f"cannot prepare the session of {identity.module} on its broker: {failure or 'no answer'}"
                )
        except OSError as err:
            raise StandInError(f"cannot reach the broker of {identity.module} ({err})") from err
        finally:
            client.disconnect()
            client.loop_stop()

    def _start_method_endpoint(self, hosts: Sequence[str], identities: Sequence[ModuleIdentity]) -> None:
        """Serve module-to-module direct methods on port `method_port` of every module's address (0: not)."""
        if not self.method_port:
            return
        assert self.certs is not None and self._invoker is not None
        endpoint = MethodEndpoint(
            hosts,
            self.method_port,
            self.certs,
            self.edge_device,
            {identity.module: identity for identity in identities},
            self._invoker,
        )
        try:
            self._endpoint = endpoint.start()
        except EndpointPermissionError as err:
            # Modules that never call each other's methods (this deployment's) lose nothing: run on, say how.
            logger.error(
                "%s. Modules calling invoke_method() get a connection error. Run the stand-in as root, grant "
                "it CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep on its python), or lower "
                "net.ipv4.ip_unprivileged_port_start to %d; set EDGEHUB_METHOD_PORT=0 to turn this endpoint off",
                err,
                self.method_port,
            )
        except MethodEndpointError as err:
            raise StandInError(str(err)) from None

    # -- operations (the control channel's, `edgehub.control.ControlOps`) -----------------------

    def module_twin(self, module: str) -> dict[str, Any]:
        """Return a module twin shaped as `az iot hub module-twin show` prints it."""
        twin = self.router.twin(module)
        connected = self._front is not None and self._front.connected(module)
        return {
            "deviceId": self.edge_device,
            "moduleId": module,
            "connectionState": "Connected" if connected else "Disconnected",
            "properties": twin,
        }

    def update_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a desired patch (pushed to the module at once) and return the updated twin."""
        self.router.apply_desired_patch(module, patch)
        return self.module_twin(module)

    def invoke_method(
        self,
        module: str,
        name: str,
        payload: Any = None,
        *,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        connect_timeout_s: float = 0.0,
    ) -> MethodResult:
        """Call a module's direct method as edgeHub does (raise ClientNotFoundError, MethodTimeoutError)."""
        if self._invoker is None:
            raise StandInError("the stand-in is not running")
        return self._invoker.invoke(
            module, name, payload, response_timeout_s=response_timeout_s, connect_timeout_s=connect_timeout_s
        )

    def method_endpoint_stats(self) -> dict[str, int]:
        """Return the HTTPS method endpoint's counters (empty when it does not run)."""
        return self._endpoint.stats() if self._endpoint is not None else {}

    def _write_broker_auth(self, folder: Path, module: str, password: str, router_password: str) -> BrokerAuth:
        """Write a module broker's password and ACL files: the module and the router, each on its own topics."""
        user, edge = _module_user(module), self.edge_device
        password_file, acl_file = folder / f"mosquitto-{module}.passwd", folder / f"mosquitto-{module}.acl"
        write_atomic(
            password_file,
            f"{user}:{mosquitto_password_hash(password)}\n{ROUTER_USER}:{mosquitto_password_hash(router_password)}\n".encode(),
        )
        module_topics = [
            f"topic write devices/{edge}/modules/{module}/messages/events/#",
            "topic write $iothub/twin/GET/#",
            "topic write $iothub/twin/PATCH/properties/reported/#",
            "topic write $iothub/methods/res/#",
            f"topic read devices/{edge}/modules/{module}/inputs/#",
            "topic read $iothub/twin/res/#",
            "topic read $iothub/twin/PATCH/properties/desired/#",
            "topic read $iothub/methods/POST/#",
        ]
        router_topics = [
            f"topic read {EVENTS_SUBSCRIPTION}",
            *(f"topic read {topic}" for topic in (*TWIN_REQUEST_SUBSCRIPTIONS, METHOD_RESPONSES_SUBSCRIPTION)),
            f"topic write devices/{edge}/modules/{module}/inputs/#",
            "topic write $iothub/twin/res/#",
            "topic write $iothub/twin/PATCH/properties/desired/#",
            "topic write $iothub/methods/POST/#",
        ]
        text = "\n".join([f"user {user}", *module_topics, "", f"user {ROUTER_USER}", *router_topics]) + "\n"
        write_atomic(acl_file, text.encode())
        return BrokerAuth(password_file, acl_file)

    def front_stats(self) -> dict[str, dict[str, int]]:
        """Return per module how many connections the front accepted and refused."""
        return self._front.stats() if self._front is not None else {}

    def _open_journal(self) -> Journal:
        """Open the router's journal: what it took from modules and has not delivered yet."""
        try:
            return Journal(self.state_dir / "journal")
        except JournalError as err:
            raise StandInError(f"{err}: pass --state-dir or set EDGEHUB_STATE_DIR to a writable folder") from err

    def stop(self) -> None:
        """Stop the router (handing what it holds to the upstream), then the brokers; the upstream stays open."""
        router, self._router = self._router, None
        keeper, self._keeper = self._keeper, None
        front, self._front = self._front, None
        control, self._control = self._control, None
        endpoint, self._endpoint = self._endpoint, None
        self._invoker = None
        try:
            if control is not None:
                control.stop()
            if endpoint is not None:
                endpoint.stop()
            if keeper is not None:
                keeper.stop()  # before the brokers: it would start them again
            if router is not None:
                router.stop()
        finally:
            if front is not None:
                front.stop()
            brokers, self._brokers = self._brokers, []
            for broker in brokers:
                broker.stop()
            lock, self._state_lock = self._state_lock, None
            if lock is not None:
                lock.release()

    def healthy(self) -> bool:
        """Return whether every broker runs and the upstream delivers."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Return what makes the stand-in unhealthy, one line each (empty while healthy)."""
        if not self._brokers:
            return ["the stand-in is not running"]
        found = self._keeper.problems() if self._keeper is not None else []
        if not found and not all(broker.running() for broker in self._brokers):
            found.append("a module broker is down")
        if self._front is None or not self._front.running():
            found.append("the TLS front of the module brokers is down")
        if not self.upstream.healthy():
            found.append("the upstream does not take messages")
        return found

    def broker_restarts(self) -> dict[str, int]:
        """Return how often each module's broker was restarted after it died."""
        return self._keeper.restarts() if self._keeper is not None else {}

    def __enter__(self) -> EdgeHubStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_standin(
    standin: EdgeHubStandIn,
    stop_event: threading.Event,
    *,
    health_file: Path | None = None,
    on_ready: Callable[[EdgeHubStandIn], None] | None = None,
    unhealthy_exit_s: float = 0.0,
) -> int:
    """Run the stand-in until `stop_event` is set; `on_ready` gets it once modules can connect.

    Return 0, or UNHEALTHY_EXIT_CODE once it was unhealthy for `unhealthy_exit_s` (0: never):
    a container's restart policy acts on an exit, never on a failing health check.
    """
    clock = UnhealthyClock(unhealthy_exit_s, time.monotonic(), setting="EDGEHUB_UNHEALTHY_EXIT_S")
    with standin:
        env_files = standin.write_env_files()
        for module, path in env_files.items():
            logger.info("Module %s: environment in %s", module, path)
        if on_ready is not None:
            on_ready(standin)
        while True:
            problems = standin.problems()
            now_s = time.monotonic()
            if not problems:
                touch_health(health_file)
            if clock.observe(not problems, now_s):
                logger.error(clock.giving_up("The edgeHub stand-in", "; ".join(problems), now_s))
                return UNHEALTHY_EXIT_CODE
            if stop_event.wait(HEALTH_INTERVAL_S):
                return 0


def _module_user(module: str) -> str:
    """Return the internal Mosquitto user a module's accepted connections use."""
    return f"module-{module}"


def _free_loopback_port() -> int:
    """Return a port free on BROKER_HOST now (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((BROKER_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def check_name(name: str, what: str) -> str:
    """Return a device or module id usable in MQTT topics and file names, or raise."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        raise StandInError(f"{what} {name!r} must be 1-64 letters, digits, '-', '_' or '.', starting alphanumeric")
    return name


def check_module_hosts(module_hosts: Mapping[str, str], modules: Sequence[str]) -> dict[str, str]:
    """Return per-module broker addresses (IP literals, one per module), or raise saying what is wrong."""
    unknown = sorted(set(module_hosts) - set(modules))
    if unknown:
        raise StandInError(f"module_hosts names module(s) the stand-in does not run: {', '.join(unknown)}")
    for module, host in module_hosts.items():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise StandInError(
                f"module_hosts[{module!r}] = {host!r} must be an IP address (it goes into the certificate's SAN)"
            ) from None
    if len(set(module_hosts.values())) != len(module_hosts):
        raise StandInError("each module needs its own address: the SDK always connects to port 8883")
    return dict(module_hosts)


def check_ca_export_dir(state_dir: Path, export_dir: Path) -> Path:
    """Return where the CA certificate is published, or raise if that folder would show private keys."""
    state, export = state_dir.resolve(), export_dir.resolve()
    if export == state or export in state.parents or export.is_relative_to(state / "certs"):
        raise StandInError(
            f"the CA export folder {export_dir} would show the state dir's private keys to modules: "
            f"choose a folder that is neither the state dir ({state_dir}), one of its parents, nor its certs/"
        )
    return export_dir


def check_ip_base(ip_base: str) -> str:
    """Return `ip_base` if it is the first three octets of a loopback address, else raise."""
    if not _IP_BASE.fullmatch(ip_base):
        raise StandInError(f"ip_base {ip_base!r} must be the first three octets of a 127.x.y.z address")
    try:
        ipaddress.ip_address(f"{ip_base}.{FIRST_HOST}")
    except ValueError:
        raise StandInError(f"ip_base {ip_base!r} is not a valid address prefix") from None
    return ip_base
