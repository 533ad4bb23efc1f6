"""Terminal drawing shared by `view` and `diff`, and the plumbing every inspection command shares.

Conventions, the same in colour and in plain text (a pipe, `--color never`):

    trained tokens   bold, underlined, green          plain: inside ⟦ … ⟧
    masked tokens    dim                              plain: as is
    token boundary   alternating background shade     plain: │ between tokens
    whitespace       · space  → tab  ␍ CR  ↵ newline (then a real line break)
    special tokens   magenta                          plain: inside ⟪ … ⟫
    diff lanes       trained in A only: on red [- … -]; trained in B only: on yellow {+ … +}
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from enum import Enum

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..options import add_flags, setting, settings_from_args
from .build_data import BuildData


class Color(str, Enum):
    AUTO = "auto"  # colour on a terminal, plain text in a pipe
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class Display:
    """How `view` and `diff` draw tokens."""

    color: Color = setting(Color.AUTO, "auto: colour on a terminal, plain text in a pipe")
    tokens: bool = setting(False, "one line per token: position, id, mask(s), piece")

    def __post_init__(self) -> None:
        object.__setattr__(self, "color", Color(self.color))


def make_console(color: Color = Color.AUTO, stderr: bool = False) -> Console:
    # off a terminal rich assumes 80 columns; tables of token pieces read better wider
    width = None if "COLUMNS" in os.environ else 120
    opts = {"stderr": stderr, "soft_wrap": stderr}  # messages on stderr are never broken mid-path
    if color is Color.ALWAYS:
        return Console(force_terminal=True, width=width, **opts)
    if color is Color.NEVER:
        return Console(no_color=True, color_system=None, highlight=False, width=width, **opts)
    console = Console(**opts)
    return console if console.is_terminal else Console(width=width, **opts)


def is_plain(console: Console) -> bool:
    return console.color_system is None or console.no_color


def print_error(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")


def open_builds(paths, err: Console) -> list[BuildData] | None:
    """Each build folder opened, or None once one that cannot be opened is explained on `err`: the
    command then exits 2."""
    try:
        return [BuildData(path) for path in paths]
    except (FileNotFoundError, ValueError) as error:  # a missing folder or shard; ManifestError is a ValueError
        print_error(err, str(error))
        return None


def add_command(sub, name: str, run, builds: dict[str, str], settings: tuple[type, ...],
                one_of: type | None = None, **parser_options) -> argparse.ArgumentParser:
    """An inspection command: positional build folders (`builds`: metavar -> help), the flags of each
    settings dataclass (those of `one_of` mutually exclusive), and a runner that opens the builds, or
    explains why it cannot and exits 2, then returns `run(*builds, *settings objects)`."""
    p = sub.add_parser(name, **parser_options)
    for metavar, help in builds.items():
        p.add_argument(metavar.lower(), metavar=metavar, help=help)
    for kind in settings:
        add_flags(p.add_mutually_exclusive_group() if kind is one_of else p, kind)

    def runner(args) -> int:
        opened = open_builds([getattr(args, m.lower()) for m in builds], make_console(stderr=True))
        if opened is None:
            return 2
        return run(*opened, *(settings_from_args(kind, args) for kind in settings))

    p.set_defaults(run=runner)
    return p


# -- tokens ---------------------------------------------------------------------------------------------

VISIBLE = str.maketrans({" ": "·", "\t": "→", "\r": "␍", "\n": "↵\n", "\u00a0": "⍽",
                         **{chr(c): chr(0x2400 + c) for c in range(32) if c not in (9, 10, 13)}})

# lanes: what a token is in one mask (view) or two (diff)
MASKED, TRAINED, A_ONLY, B_ONLY = 0, 1, 2, 3
LANE_STYLE = {MASKED: "dim", TRAINED: "bold underline green", A_ONLY: "bold underline white on red3",
              B_ONLY: "bold underline black on yellow3"}
LANE_MARKS = {MASKED: ("", ""), TRAINED: ("⟦", "⟧"), A_ONLY: ("[-", "-]"), B_ONLY: ("{+", "+}")}
SHADE = "on grey23"
SEP = "│"


def visible(text: str) -> str:
    return text.translate(VISIBLE)


def lanes_of(ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Each token's lane under two masks over the same tokens."""
    lanes = np.full(len(ma), MASKED, dtype=np.int8)
    lanes[(ma == 1) & (mb == 1)] = TRAINED
    lanes[(ma == 1) & (mb == 0)] = A_ONLY
    lanes[(ma == 0) & (mb == 1)] = B_ONLY
    return lanes


def render_stream(pieces: list[tuple[str, str]], lanes: np.ndarray, plain: bool, keep: np.ndarray | None = None):
    """A rich Text of tokens, styled by lane; tokens where `keep` is False are elided ('… N tokens …')."""
    out = Text()
    lanes = np.asarray(lanes).tolist()
    keep = None if keep is None else np.asarray(keep).tolist()
    current, skipped, at_line_start = None, 0, True
    for i, ((text, kind), lane) in enumerate(zip(pieces, lanes)):
        if keep is not None and not keep[i]:
            skipped += 1
            continue
        if plain and lane != current:
            if current is not None:
                out.append(LANE_MARKS[current][1])
            out.append(LANE_MARKS[lane][0])
        if skipped:
            out.append(f" … {skipped:,} tokens … ", style="italic")
            skipped = 0
        elif plain and not at_line_start and lane == current:
            out.append(SEP, style="dim")
        current = lane
        shown = visible(text)
        if kind == "special":
            shown = f"⟪{shown}⟫" if plain else shown
        style = LANE_STYLE[lane]
        if kind == "special":
            style += " magenta" if lane in (MASKED, TRAINED) else ""
        elif kind in ("bytes", "unknown"):
            style += " italic"
        if not plain and i % 2:
            style += " " + SHADE
        out.append(shown, style=style)
        at_line_start = shown.endswith("\n")
    if skipped:
        out.append(f" … {skipped:,} tokens …", style="italic")
    if plain and current is not None:
        out.append(LANE_MARKS[current][1])
    return out


def token_lines(ids: np.ndarray, pieces, masks: list[np.ndarray], names: list[str], positions=None) -> Text:
    """`--tokens`: one line per token: position, id, the piece (repr, whitespace visible), its mask(s)."""
    out = Text()
    header = f"{'pos':>6} {'id':>7}  " + " ".join(f"{n:>7}" for n in names) + "  piece\n"
    out.append(header, style="bold")
    positions = range(len(ids)) if positions is None else positions
    last = None
    for i in positions:
        if last is not None and i > last + 1:
            out.append(f"{'…':>6} {i - last - 1:,} tokens not shown\n", style="italic")
        last = i
        text, kind = pieces[i]
        flags = [int(m[i]) for m in masks]
        marks = " ".join(f"{'trained' if f else '·':>7}" for f in flags)
        differs = len(set(flags)) > 1
        style = "bold yellow" if differs else ("green" if any(flags) else "dim")
        shown = {"special": f"⟪{text}⟫", "bytes": text}.get(kind) or repr(text)
        out.append(f"{i:>6} {int(ids[i]):>7}  {marks}  {shown}{'   ◀ differs' if differs else ''}\n", style=style)
    return out


def legend(plain: bool, names: tuple[str, str] | None = None) -> str:
    """The key to the drawing (markup), for one build or two (`names`)."""
    if plain:
        lanes = (f"⟦trained in both⟧ [-trained in {escape(names[0])} only-] {{+trained in {escape(names[1])} "
                 "only+} masked in both" if names else "⟦trained⟧ masked")
        return lanes + " │ token boundary · space → tab ↵ newline ⟪special⟫"
    lanes = "[bold underline green]trained[/] [dim]masked[/]"
    if names:
        lanes = (f"[bold underline green]trained in both[/] [bold underline white on red3]trained in "
                 f"{escape(names[0])} only[/] [bold underline black on yellow3]trained in {escape(names[1])} "
                 "only[/] [dim]masked in both[/]")
    return (lanes + " [on grey23]alternate[/] tokens shaded · [dim]· space → tab ↵ newline[/] "
            "[magenta]special[/]")
