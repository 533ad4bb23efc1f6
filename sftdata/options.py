"""Command-line flags generated from a settings dataclass, so a default and its help are written once.

A field made with `setting(default, help)` becomes `--field-name`; an Enum default gives the choices, a
bool gives a switch (`--pack`, or `--no-train-eot` for one that is on by default), and `--help` shows
each default.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, field, fields
from enum import Enum
from typing import Any


def setting(default: Any, help: str, *, required: bool = False, metavar: str | None = None,
            negative: str | None = None):
    """A settings field: its default, its help, and how its flag looks."""
    metadata = {"help": help, "required": required, "metavar": metavar, "negative": negative,
                "enum": type(default) if isinstance(default, Enum) else None}
    return field(default=default, metadata=metadata)


def _shown(value: Any) -> str:
    if isinstance(value, Enum):
        return value.value
    if value is None:
        return "none"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 20:
        return f"{value:,}"
    return str(value)


def add_flags(parser: argparse.ArgumentParser, settings: type) -> None:
    hints = typing.get_type_hints(settings)
    for f in fields(settings):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if meta["required"]:
            parser.add_argument(flag, dest=f.name, required=True, metavar=meta["metavar"], help=meta["help"])
        elif hints[f.name] is bool:
            if default:
                parser.add_argument("--" + (meta["negative"] or f"no-{f.name.replace('_', '-')}"), dest=f.name,
                                    action="store_false", help=f"{meta['help']} (default: on; this turns it off)")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
        elif meta["enum"] is not None:
            parser.add_argument(flag, dest=f.name, default=default.value, choices=[e.value for e in meta["enum"]],
                                help=f"{meta['help']} (default: {_shown(default)})")
        else:
            kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
            metavar = meta["metavar"] or ("N" if kind is int else None)
            parser.add_argument(flag, dest=f.name, type=kind, default=default, metavar=metavar,
                                help=f"{meta['help']} (default: {_shown(default)})")


def settings_from_args(settings: type, args: argparse.Namespace, **overrides: Any):
    """The settings object from parsed flags (`overrides` replace some, e.g. paths made absolute)."""
    values = {f.name: getattr(args, f.name) for f in fields(settings)}
    return settings(**{**values, **overrides})
