"""Router pieces that need no broker."""

from __future__ import annotations

from typing import Any

import pytest

from edgehub.router import BrokerAddress, Router, RouterError, merge_patch

pytestmark = pytest.mark.fast


def test_a_twin_patch_merges_objects_and_null_deletes() -> None:
    twin: dict[str, Any] = {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}

    merge_patch(twin, {"nested": {"y": None, "z": 3}, "gone": None, "b": [1, 2], "$version": 9})

    assert twin == {"a": 1, "nested": {"x": 1, "z": 3}, "b": [1, 2]}


def test_the_router_refuses_unknown_modules() -> None:
    router = Router({"sensor": BrokerAddress("127.0.0.1", 1)}, "edge1", [], {"sensor": {"a": 1}}, lambda m: None)

    assert router.twin("sensor") == {"desired": {"a": 1, "$version": 1}, "reported": {"$version": 1}}
    with pytest.raises(RouterError, match="unknown module 'ghost'"):
        router.apply_desired_patch("ghost", {})
    with pytest.raises(RouterError, match="unknown module"):
        Router({}, "edge1", [], {"ghost": {}}, lambda m: None)
