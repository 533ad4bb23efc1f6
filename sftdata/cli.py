"""The `sftdata` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import BuildConfig, InputFormat, Masker, Overlong, SpecialText, TrainOn

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


def _enum_values(enum) -> list[str]:
    return [e.value for e in enum]


def add_build_parser(sub) -> None:
    p = sub.add_parser("build", help="build masked, tokenized shards from conversations",
                       description=BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="JSONL, JSON, Parquet files or datasets folders, read in order")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template to use instead of the tokenizer's")
    p.add_argument("--format", default="auto", choices=_enum_values(InputFormat),
                   help="input format (default: detected per file from its first record)")
    p.add_argument("--train-on", default="assistant", choices=_enum_values(TrainOn),
                   help="assistant: every assistant turn (default); last: the final assistant turn only; "
                        "all: every token. A message's own `train: true|false` wins")
    p.add_argument("--no-train-eot", dest="train_eot", action="store_false",
                   help="do not train the end-of-turn token after trained turns (default: trained)")
    p.add_argument("--max-length", type=int, default=4096,
                   help="longest document in tokens (default 4096); 0 for no limit")
    p.add_argument("--overlong", default="cut-turns", choices=_enum_values(Overlong),
                   help="what to do with longer documents: cut-turns keeps the whole turns that fit and drops "
                        "the rest (default: nothing is trained without the turns before it); split-turns cuts "
                        "them at turn boundaries into several documents (later pieces lack the earlier "
                        "turns); truncate cuts at max-length; reject drops the record. All counted in the "
                        "manifest")
    p.add_argument("--pack", action="store_true",
                   help="pack whole documents into rows of at most --max-length tokens (best fit over the "
                        "whole dataset, rows shuffled by --seed); each row keeps its documents' lengths")
    p.add_argument("--seed", type=int, default=0, help="shuffles the order of packed rows (default 0)")
    p.add_argument("--special-text", default="reject", choices=_enum_values(SpecialText),
                   help="message text that spells a special token (a user typing <|im_end|>): reject the "
                        "record (default), tokenize it as literal text, or allow it to become the control token")
    p.add_argument("--system-prompt", help="system message added to conversations that have none")
    p.add_argument("--template-date", default=BuildConfig.template_date,
                   help="the date templates' strftime_now() sees, fixed for reproducible builds (YYYY-MM-DD)")
    p.add_argument("--masker", default="spans", choices=_enum_values(Masker),
                   help="spans: sftdata's exact masks (default). response-template: a COMPARATOR, not a "
                        "recommended mode: the classic search of --response-template's token ids in each "
                        "example, training everything after the first match, to show with `sftdata diff` "
                        "which examples that approach breaks")
    p.add_argument("--response-template", metavar="TEXT",
                   help="e.g. '### Assistant:'; used by --masker response-template and as the report's baseline")
    p.add_argument("--workers", type=int, default=0,
                   help="workers: this process and N-1 worker processes (default: one per core; with 1 this "
                        "process works alone, encoding in a thread while it renders)")
    p.add_argument("--batch-size", type=int, default=BuildConfig.batch_size, help="conversations per batch: the unit of work a worker takes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write OUT/report.html (summary, charts, sampled documents with their masks)")
    p.set_defaults(run=run_build)


def _resolved(path: str | None) -> str | None:
    """A local path made absolute, so the manifest names it from anywhere; a hub id stays as given."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def config_from_args(args) -> BuildConfig:
    return BuildConfig(
        tokenizer=_resolved(args.tokenizer),
        chat_template=_resolved(args.chat_template),
        format=InputFormat(args.format),
        train_on=TrainOn(args.train_on),
        train_eot=args.train_eot,
        max_length=args.max_length or None,
        overlong=Overlong(args.overlong),
        special_text=SpecialText(args.special_text),
        system_prompt=args.system_prompt,
        template_date=args.template_date,
        pack=args.pack,
        seed=args.seed,
        masker=Masker(args.masker),
        response_template=args.response_template,
        workers=args.workers,
        batch_size=args.batch_size,
    )


def run_build(args) -> int:
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from .build import BuildError, build
    from .sources import InputError
    from .template import TemplateRenderError
    from .tokenizer import TokenizerError

    console = Console(stderr=True)
    config = config_from_args(args)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Bar(*columns, console=console, disable=args.quiet, transient=False) as bar:
        task = bar.add_task("loading tokenizer and template")

        def show(p):
            rate = p.tokens / max(time.perf_counter() - p.started, 1e-9)
            bar.update(task, description=f"{p.records:,} records  {p.documents:,} documents  "
                                         f"{p.rejected:,} rejected  {p.tokens:,} tokens  {rate:,.0f} tokens/s")

        try:
            manifest = build(args.inputs, args.out, config, overwrite=args.overwrite, on_progress=show)
        except (BuildError, InputError, TokenizerError, TemplateRenderError) as err:
            console.print(f"[bold red]error:[/] {err}")
            return 2
    _print_summary(console, manifest, args.out)
    from .report import report_after_build

    report_after_build(args.out, args.report, console)
    return 0


def _print_summary(console, manifest: dict, out: str) -> None:
    c = manifest["counts"]
    ratio = c["trained_tokens"] / max(c["tokens"], 1)
    console.print(f"[bold]{out}[/]: {c['documents']:,} documents in {len(manifest['shards'])} shard(s), "
                  f"{c['tokens']:,} tokens, {c['trained_tokens']:,} trained ({ratio:.1%}), "
                  f"{c['truncated']:,} truncated")
    for key, count in c.items():
        if key.startswith("documents_with_unrendered_"):
            field = key.removeprefix("documents_with_unrendered_")
            console.print(f"[yellow]{count:,} documents hold {field} fields the chat template does not render[/] "
                          "(they are not in the tokens; use a template that renders them)")
    if manifest.get("packing"):
        p = manifest["packing"]
        console.print(f"packed into {p['rows']:,} rows of {p['capacity']:,}: fill {p['fill']:.2%} "
                      f"(lower bound {p['lower_bound_rows']:,} rows, {p['fill_vs_lower_bound']:.2%} of its fill)")
    if c["rejected"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in c["rejected_by_reason"].items())
        console.print(f"[yellow]{c['rejected']:,} of {c['records']:,} records rejected[/] ({reasons}); "
                      f"see {out}/rejects.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftdata", description="Prepare supervised fine-tuning data with "
                                     "exact per-token loss masks, and check it before training.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_build_parser(sub)
    from .diff import add_parser as add_diff_parser
    from .report import add_parser as add_report_parser
    from .stats import add_parser as add_stats_parser
    from .viewer import add_parser as add_view_parser

    add_view_parser(sub)
    add_diff_parser(sub)
    add_stats_parser(sub)
    add_report_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
