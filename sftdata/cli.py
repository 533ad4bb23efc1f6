"""The `sftdata` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .config import BuildConfig, ConfigError, absolute_if_local
from .inspect.commands import add_parsers as add_inspect_parsers
from .inspect.report import report_after_build
from .inspect.verify import add_parser as add_verify_parser
from .manifest import Manifest
from .options import add_flags, settings_from_args

REDRAW_SECONDS = 0.1  # the progress line is redrawn at most this often

BUILD_HELP = """\
Render conversations with the model's chat template, tokenize each rendering once, and write Arrow
shards whose loss mask trains every assistant turn (and its end-of-turn token) and nothing else.

examples:
  sftdata build chats.jsonl --tokenizer ./Llama-3.1-8B-Instruct --out shards/
  sftdata build a.json b.parquet --tokenizer ./llama2 --chat-template llama2.jinja --out shards/ \\
      --train-on last --max-length 2048

Every input record ends up in a shard or in OUT/rejects.jsonl with a reason; OUT/manifest.json counts
both. See the README for the output layout.
"""


def add_build_parser(sub) -> None:
    p = sub.add_parser("build", help="build masked, tokenized shards from conversations",
                       description=BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="JSONL, JSON, Parquet files or datasets folders, read in order")
    p.add_argument("--out", required=True, help="output folder: a local path or a URL (s3://, gs://, ...)")
    add_flags(p, BuildConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    p.add_argument("--resume", action="store_true",
                   help="finish a build that was killed: reuse the units of input it completed (checked by checksum)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write OUT/report.html (summary, charts, sampled documents with their masks)")
    p.set_defaults(run=run_build)


def config_from_args(args) -> BuildConfig:
    return settings_from_args(BuildConfig, args, tokenizer=absolute_if_local(args.tokenizer),
                              chat_template=absolute_if_local(args.chat_template))


def run_build(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from .builder import BuildError, build
    from .out_dir import OutDirError
    from .sources import InputError
    from .template import TemplateRenderError
    from .tokenizer import TokenizerError, load_tokenizer

    console = Console(stderr=True)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        return _error(console, str(err))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # redrawn as batches finish, never by rich's refresh thread: a build forks its pool of workers only
    # from a process running no other thread (executors/local.py), and a spawned pool costs each worker
    # its imports, the tokenizer and tiktoken's tables again
    with Bar(*columns, console=console, disable=args.quiet, transient=False, auto_refresh=False) as bar:
        task = bar.add_task("loading tokenizer and template")
        bar.refresh()
        drawn, phase = 0.0, None

        def show(p):
            nonlocal drawn, phase
            now = time.perf_counter()
            redraw = now - drawn >= REDRAW_SECONDS or p.phase != phase  # a new phase shows at once
            drawn, phase = (now, p.phase) if redraw else (drawn, phase)
            rate = p.tokens / max(now - p.started, 1e-9)
            counts = (f"{p.records:,} records  {p.documents:,} documents  {p.rejected:,} rejected  "
                      f"{p.tokens:,} tokens  {rate:,.0f} tokens/s")
            bar.update(task, description=f"{p.phase}  {counts}" if p.phase and p.records else p.phase or counts,
                       refresh=redraw)

        try:
            # loaded here, once, for the build and its report
            tokenizer = load_tokenizer(config.tokenizer, config.chat_template)
            manifest = build(args.inputs, args.out, config, overwrite=args.overwrite, on_progress=show,
                             resume=args.resume, loaded_tokenizer=tokenizer)
        except (BuildError, OutDirError, InputError, TokenizerError, TemplateRenderError) as err:
            return _error(console, str(err))
        except OSError as err:  # disk full, permissions: the build removed its temporary files
            return _error(console, f"cannot write the build to {args.out}: {err.strerror or err} "
                                   f"({err.filename or args.out}); free space or fix the folder, then build again")
    _print_summary(console, manifest, args.out)
    report_after_build(args.out, args.report, console, tokenizer)
    if manifest.counts.documents == 0:
        c = manifest.counts
        why = f"all {_n(c.records, 'record')} rejected" if c.records else "the inputs hold no record"
        console.print(f"[bold red]error:[/] no document written ({why}); see {escape(args.out)}/rejects.jsonl")
        return 1
    return 0


def _error(console, message: str) -> int:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}")
    return 2


def _print_summary(console, manifest: Manifest, out: str) -> None:
    from rich.markup import escape

    c = manifest.counts
    ratio = c.trained_tokens / max(c.tokens, 1)
    console.print(f"[bold]{escape(out)}[/]: {_n(c.documents, 'document')} in {_n(len(manifest.shards), 'shard')}, "
                  f"{c.tokens:,} tokens, {c.trained_tokens:,} trained ({ratio:.1%}), {c.truncated:,} truncated")
    if c.context_documents:
        share = c.context_tokens / max(c.tokens, 1)
        style = "bold yellow" if share > 0.2 else "yellow" if share > 0.05 else "default"
        console.print(f"[{style}]{_n(c.context_documents, 'document')} ({c.context_tokens:,} tokens, {share:.1%} of "
                      "all) train turns in the context they are generated in[/] (the whole conversation renders "
                      "them otherwise; --turn-context whole or last writes none)")
    for field_kind, count in c.unrendered_fields.items():
        console.print(f"[yellow]{_n(count, 'document')} hold {field_kind} fields the chat template does not "
                      "render[/] (they are not in the tokens; use a template that renders them)")
    if manifest.packing:
        p = manifest.packing
        verdict = "optimal" if p.optimal else f"{p.rows - p.lower_bound_rows:,} above it"
        console.print(f"packed into {_n(p.rows, 'row')} of {p.capacity:,}: fill {p.fill:.2%} (lower bound "
                      f"{p.lower_bound_rows:,} rows: {verdict})")
    if c.rejected:
        reasons = ", ".join(f"{k} {v:,}" for k, v in c.rejected_by_reason.items())
        console.print(f"[yellow]{c.rejected:,} of {_n(c.records, 'record')} rejected[/] ({reasons}); "
                      f"see {escape(out)}/rejects.jsonl")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftdata", description="Prepare supervised fine-tuning data with "
                                     "exact per-token loss masks, and check it before training.")
    parser.add_argument("--version", action="version", version=f"sftdata {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_build_parser(sub)
    add_inspect_parsers(sub)
    add_verify_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # a build removes its temporary files on the way out
        print(f"sftdata {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `sftdata` command: `main`, then an exit without the interpreter's teardown. Everything a command
    writes is closed and published by then (a build's manifest last); the teardown would only free, one
    object at a time, what a build holds (the tokenizer's tables, its buffers): about 0.05 s of a build
    of 20,000 conversations. An exception still ends the process the usual way, with its traceback."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`sftdata view ... | head`): nobody is left to tell
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
