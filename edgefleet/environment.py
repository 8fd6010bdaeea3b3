"""Refuse environment variables that look like a process's settings but are none of them.

Pydantic reads the variables a process knows and ignores every other one, so a misspelled
`FIELD_MQTT_HOTS`, or a `SENSOR_MAX_READING_AGE` set for a module that reads `MAX_READING_AGE_S`,
leaves the default in force without a word. `unknown_variables` names such a variable and the
closest known name; `edgefleet.process.load_settings` refuses to start with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

__all__ = ["EnvCheck", "setting_variables", "unknown_variables"]

# A variable this close to a known name (difflib's ratio) is a misspelling of it: FIELD_MQTT_HOTS is
# 0.93 from FIELD_MQTT_HOST, LOGLEVEL 0.94 from LOG_LEVEL; IOTEDGE_MODULEID is 0.75 from IOTEDGE_DEVICEID.
MISSPELLING_RATIO = 0.85
# With a prefix of ours, any name is a mistake: suggest even a remote match.
PREFIXED_RATIO = 0.5
# Set by the IoT Edge runtime, the SDK, Python or the container: never ours to refuse.
FOREIGN_PREFIXES = ("IOTEDGE_", "PYTHON", "PIP_", "LC_", "XDG_")
FOREIGN_NAMES = frozenset({"EDGEMODULECACERTIFICATEFILE", "PATH", "HOME", "HOSTNAME"})


@dataclass(frozen=True, slots=True)
class EnvCheck:
    """Which variables a settings class claims: every name with `prefixes`, and near misses of its own names."""

    prefixes: tuple[str, ...] = ()
    # Variables an earlier version read, each with what replaced it: still set means a setting now ignored.
    retired: tuple[tuple[str, str], ...] = ()


def setting_variables(cls: type[BaseSettings]) -> dict[str, str]:
    """Return the variables a settings class reads: upper-case name -> the name to show a user."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            shown = f"{prefix}{field_name}".upper()
            names[shown] = shown
            continue
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        strings = [choice for choice in choices if isinstance(choice, str) and not isinstance(choice, AliasPath)]
        # By convention the last choice is the variable's own spelling (`AliasChoices("log_level", "LOG_LEVEL")`).
        for choice in strings:
            names[choice.upper()] = strings[-1]
    return names


def unknown_variables(cls: type[BaseSettings], check: EnvCheck, environ: Mapping[str, str]) -> list[str]:
    """Return one line per variable that looks like a setting of `cls` but is none, with the closest name."""
    known = setting_variables(cls)
    shown = sorted(set(known.values()))
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper in known or upper in FOREIGN_NAMES or upper.startswith(FOREIGN_PREFIXES):
            continue
        replaced_by = dict(check.retired).get(upper)
        if replaced_by is not None:
            problems.append(f"{name} is no longer read; {replaced_by}")
            continue
        prefix = next((p for p in check.prefixes if upper.startswith(p.upper())), None)
        if prefix is not None:
            # SENSOR_MAX_READING_AGE means MAX_READING_AGE_S; EDGEHUB_DEPLOYMNT means EDGEHUB_DEPLOYMENT.
            guess = _closest([upper, upper[len(prefix) :]], shown, PREFIXED_RATIO)
            hint = f"; did you mean {guess}?" if guess else f"; it reads {_listed(shown)}"
            problems.append(f"{name} is not a setting of this process{hint}")
            continue
        guess = _closest([upper], shown, MISSPELLING_RATIO)
        if guess is not None:
            problems.append(f"{name} is not a setting of this process; did you mean {guess}?")
    return problems


def _closest(spellings: Sequence[str], shown: Iterable[str], cutoff: float) -> str | None:
    """Return the known name most like any of `spellings`, if one is at least `cutoff` alike."""
    best, best_ratio = None, cutoff
    for candidate in shown:
        for spelling in spellings:
            ratio = difflib.SequenceMatcher(None, spelling, candidate.upper()).ratio()
            if ratio > best_ratio or (best is None and ratio >= cutoff):
                best, best_ratio = candidate, ratio
    return best


def _listed(names: list[str]) -> str:
    return ", ".join(names)
