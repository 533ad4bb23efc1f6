"""The report's share of a build: `python -m bench.bench_report [--conversations 20000] [--large 200000]`.

`sftdata build` writes OUT/report.html last, in the same process. This times both halves as the command
runs them: in a fresh process per turn, `build()` (default settings, `--pack` at 4096, as the build
benchmark) and then `report_after_build`, and prints the report's seconds as a share of the build's.
The corpus is ../shared/datasets/dummy_conversation.json (500 ShareGPT conversations) cycled to each size,
tokenized with Llama 3.1; the turns of the two sizes alternate over the rounds and the fastest of each is
kept. Bars (issue 17): the report at most 5 % of the build at 20,000 conversations, 2 % at 200,000.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench import SHARED, make_corpus
from sftdata.builder import build
from sftdata.config import BuildConfig
from sftdata.inspect.report import report_after_build

TOKENIZER = SHARED / "tokenizers" / "llama3_1"


def _turn(corpus: str, out: str) -> None:
    """One build and its report, in this (fresh) process; prints their seconds as JSON."""
    started = time.perf_counter()
    manifest = build([corpus], out, BuildConfig(tokenizer=str(TOKENIZER), pack=True), overwrite=True)
    built = time.perf_counter()
    if report_after_build(out, True, Console(stderr=True, quiet=True)) is None:
        raise SystemExit("no report was written")
    done = time.perf_counter()
    counts = manifest.counts
    print(json.dumps({"build": built - started, "report": done - built, "documents": counts.documents,
                      "tokens": counts.tokens}))


def run_turn(corpus: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.bench_report", "--turn", str(corpus), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="the second size (0: skip)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each size, alternating")
    parser.add_argument("--turn", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turn:
        _turn(*args.turn)
        return
    sizes = [n for n in (args.conversations, args.large) if n]
    bars = {args.conversations: 0.05, args.large: 0.02}
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {n: make_corpus(Path(tmp) / f"corpus-{n}", n, ("dummy_conversation.json",))[0] for n in sizes}
        best: dict[int, dict] = {}
        for _ in range(args.rounds):
            for n in sizes:
                turn = run_turn(corpora[n], Path(tmp) / f"out-{n}")
                kept = best.setdefault(n, turn)
                kept.update(build=min(kept["build"], turn["build"]),
                            report=min(kept["report"], turn["report"]))
    print("| conversations | documents | tokens | build s | report s | report / build | bar |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        b = best[n]
        print(f"| {n:,} | {b['documents']:,} | {b['tokens']:,} | {b['build']:.2f} | {b['report']:.3f} | "
              f"{b['report'] / b['build']:.1%} | {bars[n]:.0%} |")


if __name__ == "__main__":
    main()
