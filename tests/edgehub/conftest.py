"""Fixtures for the edgeHub stand-in: real Mosquitto, the real router, real SDK modules in subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.routes import Message, parse_routes
from edgehub.sink import LakeSink
from edgehub.standin import EdgeHubStandIn
from edgehub.upstream import Upstream
from tests.edge_fixtures import wait_for  # noqa: F401 - re-exported for the tests here
from tests.hub_logins import HubLogins

MODULE_APP = Path(__file__).with_name("module_app.py")
EDGE_DEVICE = "edge1"
_blocks = itertools.count(1)


def next_ip_base() -> str:
    """Return a fresh loopback block per stand-in; the pid keeps parallel test runs apart on port 8883."""
    block = next(_blocks)
    assert block < 250, "ran out of loopback blocks"
    return f"127.{100 + os.getpid() % 100}.{block}"


class ModuleProcess:
    """One module process (tests/…/module_app.py on the real SDK), commanded over its stdin/stdout."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path, *, sastoken_ttl: int | None = None) -> None:
        self.name = name
        # Keep only the dev variables: with IOTEDGE_* set the SDK would look for a real edge runtime.
        full_env = {key: value for key, value in os.environ.items() if not key.startswith("IOTEDGE_")}
        full_env.update(env)
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(MODULE_APP), name, *([str(sastoken_ttl)] if sastoken_ttl is not None else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=full_env,
        )
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                continue  # not ours (a library printing to stdout)

    def _reply(self, wanted: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self._replies.empty()):
                stderr = self.stderr_path.read_text()[-3000:]
                pytest.fail(f"module {self.name} gave no reply {wanted}; stderr:\n{stderr}")
            try:
                reply = self._replies.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if reply.get("id") == wanted:
                return reply

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Wait until the module has connected and subscribed (its handlers are set)."""
        self._reply(0, timeout_s)

    def request(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one command and return the module's reply; fail the test if it reports an error."""
        ident = next(self._ids)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": ident, "op": op, **args}) + "\n")
        self.process.stdin.flush()
        reply = self._reply(ident, timeout_s)
        if "error" in reply:
            pytest.fail(f"module {self.name} failed {op}: {reply['error']}")
        return reply

    def inputs(self, input_name: str, *, count_only: bool = False) -> dict[str, Any]:
        """Return what the module received on an input."""
        return self.request("inputs", input=input_name, count_only=count_only)

    def close(self) -> None:
        """Ask the module to exit; kill it if it does not."""
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        finally:
            self._stderr.close()


class CollectingUpstream:
    """An upstream that keeps what it is given, for tests that do not need the lake."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.closed = False

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        self.messages.append(message)
        if on_durable is not None:
            on_durable()

    def stats(self) -> dict[str, int]:
        return {"messages": len(self.messages)}

    def healthy(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


@dataclass
class Edge:
    """A running stand-in with its module processes and its upstream (the lake sink unless told otherwise)."""

    standin: EdgeHubStandIn
    modules: dict[str, ModuleProcess]
    lake_dir: Path
    upstream: Upstream

    @property
    def sink(self) -> LakeSink:
        """Return the lake sink the stand-in writes `$upstream` to."""
        assert isinstance(self.upstream, LakeSink)
        return self.upstream

    def __getitem__(self, module: str) -> ModuleProcess:
        return self.modules[module]


StartEdge = Callable[..., Edge]


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[StartEdge]:
    """Return a function that starts a stand-in on its own loopback block plus one SDK process per module."""
    started: list[Edge] = []

    def start(
        routes: Mapping[str, str],
        desired: Mapping[str, Mapping[str, Any]] | None = None,
        modules: Sequence[str] = ("sensor", "inference"),
        flush_every_s: float = 0.5,
        processes: bool = True,
        upstream_mqtt: tuple[HubLogins, int] | None = None,
        ttl_s: float = 7200,
    ) -> Edge:
        lake_dir = tmp_path / "lake"
        upstream: Upstream
        if upstream_mqtt is not None:  # the sink service's broker on 127.0.0.1, the stand-in's login
            logins, port = upstream_mqtt
            upstream = logins.publisher(port, f"edgefleet-edgehub-{EDGE_DEVICE}")
        else:
            upstream = LakeSink(lake_dir, flush_every_s)
        standin = EdgeHubStandIn(
            tmp_path / "state",
            EDGE_DEVICE,
            list(modules),
            parse_routes(dict(routes)),
            dict(desired or {}),
            upstream=upstream,
            ip_base=next_ip_base(),
            ttl_s=ttl_s,
        )
        edge = Edge(standin, {}, lake_dir, upstream)
        started.append(edge)
        standin.start()
        for module in modules if processes else ():
            edge.modules[module] = ModuleProcess(module, standin.module_environment(module), tmp_path)
        for process in edge.modules.values():
            process.wait_ready()
        return edge

    yield start
    for edge in reversed(started):
        for process in edge.modules.values():
            process.close()
        edge.standin.stop()
        edge.upstream.close()
