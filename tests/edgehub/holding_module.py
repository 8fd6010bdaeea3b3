"""An inference-module stand-in on our EdgeLink and the real SDK: prints each input message, holds one forever.

A message whose body starts with `hold` never returns from the handler, as if the process were
killed while keeping it: the test kills it there and checks edgeHub delivers it again.
One JSON line per event on stdout: `{"ready": true}`, then `{"input": ..., "body": ...}` per message.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping

from edgefleet.endpoints import INFERENCE
from modules.runtime import EdgeLink, create_module_client

_out = threading.Lock()


def emit(record: dict[str, object]) -> None:
    """Write one JSON line to stdout."""
    with _out:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def main() -> None:
    """Connect as the inference module and report input messages until killed."""
    link = EdgeLink(create_module_client(), INFERENCE)

    def received(name: str, body: bytes, properties: Mapping[str, str]) -> None:
        emit({"input": name, "body": body.decode(), "props": dict(properties)})
        if body.startswith(b"hold"):
            threading.Event().wait()

    assert link.connect(register=lambda: link.on_input(received))
    emit({"ready": True})
    threading.Event().wait()


if __name__ == "__main__":
    main()
