"""The last desired set a module accepted, kept in its STATE_DIR so a restart never runs on nothing.

A deployment can hold a desired set the module rejects (a bad patch merged into the twin); the
module then starts with the set it last accepted and reports the rejection as `configError`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from edgefleet.desired import DesiredError, merge_desired, parse_desired

logger = logging.getLogger(__name__)

__all__ = [
    "LAST_GOOD_FILE",
    "LastGoodDesired",
    "StartDesired",
    "accept_desired",
    "apply_desired_patch",
    "desired_at_start",
    "desired_from_patch",
]

LAST_GOOD_FILE = "desired.json"

DesiredT = TypeVar("DesiredT", bound=BaseModel)


class LastGoodDesired:
    """Read and write `<state_dir>/desired.json`: the module's last accepted desired set, owner-only."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LAST_GOOD_FILE

    def save(self, desired: BaseModel) -> None:
        """Write the accepted values atomically with mode 0600; log (never raise) when the disk refuses."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        body = json.dumps(desired.model_dump(by_alias=True), indent=2, sort_keys=True).encode("utf-8")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # a file left by an older run keeps its mode otherwise
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as err:
            logger.error("Cannot keep the last good desired properties in %s (%s); set STATE_DIR", self.path, err)

    def load(self) -> dict[str, Any] | None:
        """Return the saved desired set, or None when there is none or it cannot be read."""
        try:
            values = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            logger.error("Ignoring the last good desired properties in %s: %s", self.path, err)
            return None
        if not isinstance(values, dict):
            logger.error("Ignoring the last good desired properties in %s: not a JSON object", self.path)
            return None
        return values


@dataclass(frozen=True, slots=True)
class StartDesired(Generic[DesiredT]):
    """The desired values a module starts with (None: nothing usable) and the error to log and report, if any."""

    desired: DesiredT | None
    error: str | None


def desired_at_start(schema: type[DesiredT], twin: Mapping[str, Any], store: LastGoodDesired) -> StartDesired[DesiredT]:
    """Validate the twin's full desired set; when rejected, fall back to the last good set saved in `store`."""
    try:
        desired = parse_desired(schema, twin)
    except DesiredError as rejected:
        return _last_good(schema, rejected, store)
    store.save(desired)
    return StartDesired(desired, None)


def _last_good(schema: type[DesiredT], rejected: DesiredError, store: LastGoodDesired) -> StartDesired[DesiredT]:
    saved = store.load()
    if saved is not None:
        try:
            desired = parse_desired(schema, saved)
        except DesiredError as err:
            logger.error("Ignoring the last good desired properties in %s: %s", store.path, err)
        else:
            running = DesiredError(rejected.problems, f"running with the last good values from {store.path}")
            return StartDesired(desired, str(running))
    nothing = DesiredError(rejected.problems, "no last good values saved; fix the deployment's desired properties")
    return StartDesired(None, str(nothing))


def apply_desired_patch(current: DesiredT, patch: Mapping[str, Any]) -> DesiredT:
    """Return `current` with a twin desired patch applied (`null` = default); raise DesiredError naming each bad one."""
    try:
        return parse_desired(type(current), merge_desired(current.model_dump(by_alias=True), patch))
    except DesiredError as err:
        raise DesiredError(err.problems, "keeping the previous values") from None


def desired_from_patch(current: DesiredT, patch: Mapping[str, Any], store: LastGoodDesired) -> StartDesired[DesiredT]:
    """Apply a patch strictly; keep the result as the last good set, or return why it was rejected."""
    try:
        desired = apply_desired_patch(current, patch)
    except DesiredError as err:
        return StartDesired(None, str(err))
    store.save(desired)
    return StartDesired(desired, None)


def accept_desired(
    outcome: StartDesired[DesiredT],
    use: Callable[[DesiredT, str | None], None],
    reject: Callable[[str], None],
) -> None:
    """Hand a module the desired values to run with (and any error to report), or the rejection alone."""
    if outcome.desired is None:
        reject(outcome.error or "desired properties rejected")
        return
    if outcome.error is not None:
        logger.error("%s", outcome.error)
    use(outcome.desired, outcome.error)
