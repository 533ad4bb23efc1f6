"""Build throughput against its floor, scaling with workers, stage times and memory:
`python -m bench.bench_build [--conversations 20000] [--large 200000]`.

The corpus is every conversation in ../shared/datasets (all formats), cycled to the requested size as
one JSONL file per source. The floor is what cannot be avoided: rendering each conversation once with
the chat template plus one batch encode with offsets by the tokenizers library, in one process (the
build encodes with tiktoken where that gives the same ids: sftdata/tiktoken_bpe.py). When `trl` is installed, its own
SFT preparation of the same conversations (assistant-only loss, best-fit-decreasing packing, 2
processes) is measured too. Every figure is measured in this run, each configuration in a fresh
process, the configurations taking turns over several rounds (fastest run kept), and printed as a ratio
against that floor.

The command as users run it is timed too: `python -m sftdata build ... --pack` (default settings
otherwise, so the report is written) from process start to exit, with the tokenizer cache warm and
sftdata's bytecode compiled, as an installed package has it (pip compiles it at install; an editable
install writes it on its first run, unless PYTHONDONTWRITEBYTECODE is set, as it is on some CI and
sandbox machines: every run would then compile sftdata's modules again, 0.05 s of start-up). The
report's share: `report_after_build` alone, timed in a fresh process on that build's folder (and on the
large build's), against the in-process build's wall time.

A second corpus, reasoning and tool use (the shared glaive_toolcall_en_demo.json and
reason_tool_use_demo_50.jsonl cycled to `--reasoning` records), is built with the Qwen3 tokenizer with
each turn trained in its own context (--turn-context own, the default) and inside the whole rendering
(whole): documents per record, the token overhead of own against whole, and tokens written per second
of each against the plain corpus (dummy_conversation.json cycled alike) built the same way.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import SHARED, make_corpus

TOKENIZER = SHARED / "tokenizers" / "llama3_1"
QWEN3 = SHARED / "tokenizers" / "qwen3"
MAX_LENGTH = 4096
REASONING_SOURCES = ("glaive_toolcall_en_demo.json", "reason_tool_use_demo_50.jsonl")
PLAIN_SOURCES = ("dummy_conversation.json",)


def _peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def run_floor(paths: list[Path]) -> dict:
    from sftdata.config import BuildConfig
    from sftdata.rejects import RecordError
    from sftdata.sources import read_inputs
    from sftdata.spans import template_messages
    from sftdata.worker import Worker

    worker = Worker(BuildConfig(tokenizer=str(TOKENIZER)))
    conversations = []
    for record in read_inputs(paths):
        try:
            conversations.append(worker.conversation(record))
        except RecordError:
            pass
    backend = worker.tokenizer.backend  # parsed before the clock starts (a build may never parse it)
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(conversations), 1024):
        texts = [worker.template.render(template_messages(c.messages), c.tools).text
                 for c in conversations[i : i + 1024]]
        tokens += sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def run_trl(paths: list[Path]) -> dict:
    """TRL's own SFT preparation of the same conversations: its chat template rendering, tokenization,
    assistant-only masks (TRL swaps in its training template for Llama 3) and best-fit-decreasing
    packing, with 2 processes. Timed around SFTTrainer's construction, which prepares the dataset."""
    import datasets
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftdata.formats import to_conversation
    from sftdata.rejects import RecordError
    from sftdata.sources import read_inputs

    rows = []
    for record in read_inputs(paths):
        try:
            conversation = to_conversation(record.data, record.source_id, record.format)
        except RecordError:
            continue
        rows.append({"messages": [{"role": m.role, "content": m.content} for m in conversation.messages]})
    dataset = datasets.Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    args = SFTConfig(output_dir=tempfile.mkdtemp(), assistant_only_loss=True, packing=True, packing_strategy="bfd",
                     max_length=MAX_LENGTH, dataset_num_proc=2, report_to=[], bf16=False, use_cpu=True,
                     disable_tqdm=True)
    started = time.perf_counter()
    trainer = SFTTrainer(model=tiny, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": sum(len(ids) for ids in trainer.train_dataset["input_ids"])}


def run_build(paths: list[Path], workers: int, pack: bool, out: Path, tokenizer: str = str(TOKENIZER),
              turn_context: str = "own") -> dict:
    from sftdata.builder import build
    from sftdata.config import BuildConfig

    started = time.perf_counter()
    manifest = build(paths, out, BuildConfig(tokenizer=tokenizer, workers=workers, pack=pack, max_length=MAX_LENGTH,
                                             turn_context=turn_context), overwrite=True)
    own, children = _peak_rss_mb()
    c = manifest.counts
    return {"seconds": time.perf_counter() - started, "tokens": c.tokens, "stages": manifest.seconds,
            "rss_mb": own, "worker_rss_mb": children, "fill": manifest.packing.fill if manifest.packing else None,
            "records_written": c.records_written, "documents": c.documents, "context_documents": c.context_documents,
            "context_tokens": c.context_tokens, "rejected": c.rejected}


def run_cli(paths: list[Path], out: str) -> dict:
    """`sftdata build` as a user runs it: a new process, from its start to its exit."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "sftdata", quiet=1)  # see the docstring
    command = [sys.executable, "-m", "sftdata", "build", *map(str, paths), "--tokenizer", str(TOKENIZER),
               "--out", out, "--pack", "--max-length", str(MAX_LENGTH), "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - started
    if not (Path(out) / "report.html").exists():
        sys.exit(f"the command wrote no report in {out}")
    return {"seconds": seconds, "tokens": json.loads((Path(out) / "manifest.json").read_text())["counts"]["tokens"]}


def run_report(out: Path) -> dict:
    """What the command does after the build: the report, on a finished build's folder."""
    import io

    from rich.console import Console

    from sftdata.inspect.report import report_after_build

    started = time.perf_counter()
    report_after_build(out, True, Console(file=io.StringIO()))
    return {"seconds": time.perf_counter() - started}


def reasoning_report(tmp: Path, records: int, rounds: int) -> None:
    """Per-turn context on a reasoning/tool corpus against the whole rendering, and both against plain chats."""
    corpora = {"reasoning/tool": make_corpus(tmp / "reasoning", records, REASONING_SOURCES),
               "plain": make_corpus(tmp / "plain", records, PLAIN_SOURCES)}
    rows = {}
    for corpus, paths in corpora.items():
        configurations = {policy: ("build", None, {"workers": 1, "pack": False, "tokenizer": str(QWEN3),
                                                   "turn_context": policy, "out": str(tmp / f"{corpus}-{policy}")})
                          for policy in ("own", "whole")}
        for policy, run in measure(configurations, paths, rounds).items():
            rows[corpus, policy] = run
    print(f"\nper-turn context (Qwen3 tokenizer, 1 worker, unpacked), {records:,} records per corpus\n")
    print(f"{'corpus':16} {'context':7} {'written':>8} {'docs/rec':>9} {'tokens':>11} {'seconds':>8} "
          f"{'tokens/s':>10} {'s/Mtok':>8}")
    for (corpus, policy), r in rows.items():
        print(f"{corpus:16} {policy:7} {r['records_written']:8,} {r['documents'] / max(r['records_written'], 1):9.2f} "
              f"{r['tokens']:11,} {r['seconds']:8.2f} {r['tokens'] / r['seconds']:10,.0f} "
              f"{1e6 * r['seconds'] / r['tokens']:8.2f}")
    for corpus in corpora:
        own, whole = rows[corpus, "own"], rows[corpus, "whole"]
        overhead = own["tokens"] / whole["tokens"] - 1
        cost = (own["seconds"] / own["tokens"]) / (whole["seconds"] / whole["tokens"]) - 1
        print(f"{corpus}: own writes {own['context_documents']:,} extra documents, {overhead:+.1%} tokens against "
              f"whole; seconds per token written {cost:+.1%} against whole (bar: at most {overhead:+.1%}); "
              f"wall time {own['seconds'] / whole['seconds'] - 1:+.1%}")
    plain = rows["plain", "own"]
    reasoning = rows["reasoning/tool", "own"]
    print(f"reasoning/tool against plain (both own): tokens/s "
          f"{(reasoning['tokens'] / reasoning['seconds']) / (plain['tokens'] / plain['seconds']):.2f}x")


def run_child(kind: str, paths: list[Path], env: dict | None = None, **kwargs) -> dict:
    """One configuration in a fresh Python process (none shares warm state or memory)."""
    if kind == "cli":
        return run_cli(paths, **kwargs)
    request = json.dumps({"kind": kind, "paths": [str(p) for p in paths], **kwargs})
    done = subprocess.run([sys.executable, "-m", "bench.bench_build", "--child", request], check=True,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(configurations: dict[str, tuple], paths: list[Path], rounds: int) -> dict[str, dict]:
    """Each configuration (kind, env, keyword arguments) `rounds` times, taking turns, so that a slow
    spell of a shared machine falls on all of them; the fastest run of each, since it only ever adds."""
    runs: dict[str, list[dict]] = {name: [] for name in configurations}
    for _ in range(rounds):
        for name, (kind, env, kwargs) in configurations.items():
            runs[name].append(run_child(kind, paths, env, **kwargs))
    return {name: min(r, key=lambda run: run["seconds"]) for name, r in runs.items()}


def _child(request: str) -> None:
    spec = json.loads(request)
    paths = [Path(p) for p in spec.pop("paths")]
    kind = spec.pop("kind")
    if kind == "floor":
        result = run_floor(paths)
    elif kind == "trl":
        result = run_trl(paths)
    elif kind == "report":
        result = run_report(Path(spec["out"]))
    else:
        result = run_build(paths, out=Path(spec.pop("out")), **spec)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="size of the memory comparison (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration, taking turns")
    parser.add_argument("--reasoning", type=int, default=5_000,
                        help="records of the reasoning/tool corpus (Qwen3 tokenizer; 0: skip)")
    parser.add_argument("--only-reasoning", action="store_true", help="measure the reasoning/tool corpus only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    if not TOKENIZER.exists():
        sys.exit(f"needs the shared Llama-3.1 tokenizer at {TOKENIZER}")
    cores = len(os.sched_getaffinity(0))
    from sftdata.executors.local import default_workers

    default = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.reasoning and QWEN3.exists():
            reasoning_report(tmp, args.reasoning, args.rounds)
        if args.only_reasoning:
            return
        paths = make_corpus(tmp / "corpus", args.conversations)
        one_thread = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}

        def build_run(workers: int, pack: bool) -> tuple:
            return "build", None, {"workers": workers, "pack": pack, "out": str(tmp / f"out-{workers}-{pack}")}

        configurations = {
            "floor: render + encode, 1 process, 1 tokenizer thread": ("floor", one_thread, {}),
            "floor: render + encode, 1 process": ("floor", None, {}),
            "sftdata build --pack, 1 worker (in process)": build_run(1, True),
        }
        if default != 2:
            configurations["sftdata build --pack, 2 workers"] = build_run(2, True)
        configurations[f"sftdata build --pack, default ({default} workers)"] = build_run(0, True)
        configurations[f"sftdata build, unpacked, default ({default} workers)"] = build_run(0, False)
        cli_name = "`sftdata build --pack` command, start to exit, report on"
        configurations[cli_name] = ("cli", None, {"out": str(tmp / "cli")})
        try:
            import trl

            configurations[f"TRL {trl.__version__} SFTTrainer preparation, 2 processes"] = ("trl", None, {})
        except ImportError:
            print("TRL is not installed: its row is left out (pip install trl to compare)")
        rows = measure(configurations, paths, args.rounds)
        report = measure({"report": ("report", None, {"out": str(tmp / "cli")})}, [], args.rounds)["report"]
        floor = rows["floor: render + encode, 1 process"]
        floor_rate = floor["tokens"] / floor["seconds"]
        print(f"\n{args.conversations:,} conversations, {floor['tokens']:,} tokens (Llama-3.1 tokenizer), "
              f"{cores} cores, max length {MAX_LENGTH}\n")
        print(f"{'configuration':58} {'seconds':>8} {'tokens/s':>10} {'vs floor':>9}")
        for name, r in rows.items():
            rate = r["tokens"] / r["seconds"]
            print(f"{name:58} {r['seconds']:8.2f} {rate:10,.0f} {rate / floor_rate:9.2f}")
        packed = rows[f"sftdata build --pack, default ({default} workers)"]
        unpacked = rows[f"sftdata build, unpacked, default ({default} workers)"]
        trl_row = next((r for name, r in rows.items() if name.startswith("TRL")), None)
        cli = rows[cli_name]
        cli_rate = cli["tokens"] / cli["seconds"]
        one = rows["floor: render + encode, 1 process, 1 tokenizer thread"]
        print(f"\nthe command, start to exit with its report: {cli_rate / floor_rate:.2f}x the floor (bar 1.5x); "
              f"in process {(packed['tokens'] / packed['seconds']) / floor_rate:.2f}x; against the floor held to "
              f"one tokenizer thread {cli_rate / (one['tokens'] / one['seconds']):.2f}x")
        if trl_row:
            trl_rate = trl_row["tokens"] / trl_row["seconds"]
            print(f"against TRL: the command {cli_rate / trl_rate:.2f}x TRL's tokens/s (bar 3.5x), the default packed "
                  f"build in process {(packed['tokens'] / packed['seconds']) / trl_rate:.2f}x")
        print(f"report: {report['seconds']:.2f} s, {report['seconds'] / packed['seconds']:.1%} of the in-process build "
              f"(bar 5 %), {report['seconds'] / cli['seconds']:.1%} of the command's wall time")
        pack_s = packed["stages"]["plan_rows"]
        print(f"\npacking: planning the rows takes {pack_s:.2f} s, {pack_s / packed['seconds']:.1%} of the packed build's "
              f"wall time (wall time packed vs unpacked: {packed['seconds'] / unpacked['seconds'] - 1:+.1%}); "
              f"fill {packed['fill']:.2%}")
        stages = packed["stages"]
        print("stage seconds (summed over workers): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        if args.large:
            big_paths = make_corpus(tmp / "corpus_large", args.large)
            big = measure({"large": ("build", None, {"workers": 0, "pack": True, "out": str(tmp / "large")})},
                          big_paths, args.rounds)["large"]
            big_report = measure({"report": ("report", None, {"out": str(tmp / "large")})}, [], args.rounds)["report"]
            print(f"\n{args.large:,} conversations: build {big['seconds']:.2f} s, report {big_report['seconds']:.2f} s, "
                  f"{big_report['seconds'] / big['seconds']:.1%} of the build (bar 2 %)")
            small_rss = packed["rss_mb"] + packed["worker_rss_mb"]
            big_rss = big["rss_mb"] + big["worker_rss_mb"]
            print(f"\npeak RSS (main + largest worker): {args.conversations:,} conversations {small_rss:,.0f} MB, "
                  f"{args.large:,} conversations {big_rss:,.0f} MB: ratio {big_rss / small_rss:.2f}")


if __name__ == "__main__":
    main()
