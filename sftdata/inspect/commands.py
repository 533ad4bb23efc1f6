"""The inspection commands, registered with the `sftdata` command line."""

from __future__ import annotations

from . import diff, report, stats, view


def add_parsers(sub) -> None:
    for command in (view, diff, stats, report):
        command.add_parser(sub)
