"""The `edgefleet` subcommands, one file per group: each adds its parser and holds its `cmd_*` functions."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

__all__ = ["Subcommands"]

if TYPE_CHECKING:
    # argparse's subparsers object; its class is private, but typeshed describes it.
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subcommands: TypeAlias = argparse._SubParsersAction
