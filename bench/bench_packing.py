"""How full packed rows are, against the lower bound and the usual baselines: `python -m bench.bench_packing`.

Lengths come from the real conversations in ../shared/datasets when that folder is there (tokens of
the message texts with the Llama 3.1 tokenizer, plus 5 tokens per message and 1 for the chat template;
characters / 3.5 without the tokenizer), cycled to 20,000 documents; and from a seeded synthetic
long-tailed mix (most documents a few hundred tokens, a quarter around 1,500, a few near 4,096), since
the demo datasets are short. Documents longer than a row are left out at that row length, as a build
splits or rejects them before packing.

Every ratio is against baselines measured in the same run: rows, fill = tokens / (rows * L), and fill
relative to the lower bound's fill (= lower-bound rows / rows).
"""

from __future__ import annotations

import functools
import json
import sys
import time

import numpy as np

from bench import SHARED
from sftdata.packing import (
    best_fit_decreasing,
    fill_stats,
    first_fit_decreasing,
    l2_lower_bound_rows,
    lower_bound_rows,
    pack,
)

TOKENIZER = SHARED / "tokenizers" / "llama3_1" / "tokenizer.json"
CAPACITIES = (4096, 2048)
DOCS = 20_000
BIG = 200_000


def real_lengths() -> tuple[np.ndarray, str] | None:
    datasets_dir = SHARED / "datasets"
    if not datasets_dir.is_dir():
        return None
    from sftdata.formats import to_conversation
    from sftdata.rejects import RecordError
    from sftdata.sources import read_inputs

    texts, messages = [], []
    for path in sorted(p for p in datasets_dir.iterdir() if p.suffix in (".json", ".jsonl")):
        for record in read_inputs([path]):
            if isinstance(record.data, RecordError):
                continue
            try:
                conversation = to_conversation(record.data, record.source_id, record.format)
            except RecordError:
                continue
            parts = []
            for m in conversation.messages:
                parts += [m.content, m.reasoning or ""]
                for call in m.tool_calls:
                    args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
                    parts += [call.name, args]
            if conversation.tools:
                parts.append(json.dumps(conversation.tools))
            texts.append("\n".join(p for p in parts if p))
            messages.append(len(conversation.messages))
    overhead = 5 * np.array(messages) + 1
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    if tokenizers is not None and TOKENIZER.is_file():
        tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
        counts = np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)])
        how = f"{len(texts):,} real conversations, llama3.1 tokens"
    else:  # a rough estimate still shows the shape of the distribution
        counts = np.array([int(len(t) / 3.5) for t in texts])
        how = f"{len(texts):,} real conversations, chars/3.5 (no tokenizers package or no {TOKENIZER})"
    return (counts + overhead).astype(np.int64), how


def synthetic_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    short = rng.lognormal(np.log(400), 0.7, n)
    long = rng.lognormal(np.log(1500), 0.5, n)
    near_full = rng.uniform(0.8 * 4096, 4096, n)
    u = rng.random(n)
    lengths = np.where(u < 0.70, short, np.where(u < 0.95, long, near_full))
    return np.clip(lengths, 16, 4096).astype(np.int64)


def trl_packer():
    """TRL's own pack_dataset(strategy="bfd") as lengths -> (rows, seconds), or None and why not."""
    try:
        import datasets
        import pyarrow as pa
        import pyarrow.compute as pc
        import trl
        from datasets.table import InMemoryTable
        from trl.data_utils import pack_dataset
    except ImportError as err:
        return None, f"TRL column skipped: cannot import trl ({type(err).__name__}: {err}); `pip install trl`"
    datasets.disable_progress_bars()

    def rows(lengths: np.ndarray, capacity: int) -> tuple[int, float]:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(offsets[-1], dtype=np.int32)))
        dataset = datasets.Dataset(InMemoryTable(pa.table({"input_ids": ids})))  # dummy ids, real lengths
        start = time.perf_counter()
        packed = pack_dataset(dataset, seq_length=capacity, strategy="bfd")
        seconds = time.perf_counter() - start
        packed_lengths = pc.list_value_length(packed.data.column("input_ids"))
        assert pc.sum(packed_lengths).as_py() == int(lengths.sum()), "TRL dropped or added tokens"
        return len(packed), seconds

    return (
        rows,
        f"TRL: trl {trl.__version__} pack_dataset(strategy='bfd'), its default map batch of 1,000 documents",
    )


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> int:
    sources = []
    real = real_lengths()
    if real is None:
        print(f"no {SHARED / 'datasets'}: synthetic lengths only")
    else:
        lengths, how = real
        cycled = functools.partial(np.resize, lengths)  # cycled(n): the lengths repeated to n documents
        sources.append(("real", cycled, how + f", cycled to {DOCS:,} (and {BIG:,} for timing)"))
    sources.append(("synthetic", synthetic_lengths, "synthetic long-tailed mix, seed 0"))

    trl_rows, trl_how = trl_packer()
    notes = [f"{name}: {how}" for name, _, how in sources] + [trl_how]
    header = f"{'lengths':<10} {'L':>5} {'docs':>6} {'method':<22} {'rows':>7} {'fill':>8} {'vs LB fill':>10} {'time s':>7}"
    table = [header, "-" * len(header)]
    timing = []
    for name, make_lengths, _ in sources:
        for capacity in CAPACITIES:
            all_lengths = make_lengths(DOCS)
            lengths = all_lengths[all_lengths <= capacity]
            dropped = len(all_lengths) - len(lengths)
            if dropped:
                notes.append(f"{name} at L={capacity}: {dropped} documents longer than L left out")
            tokens = int(lengths.sum())
            lb = lower_bound_rows(lengths, capacity)
            prefix = f"{name:<10} {capacity:>5} {len(lengths):>6}"

            def line(method, rows, seconds=None, prefix=prefix, tokens=tokens, capacity=capacity, lb=lb):
                fill = tokens / (rows * capacity)
                secs = f"{seconds:7.2f}" if seconds is not None else f"{'':7}"
                table.append(f"{prefix} {method:<22} {rows:>7} {fill:>8.4%} {lb / rows:>10.5f} {secs}")

            line("lower bound ceil(T/L)", lb)
            line("L2 bound (Martello-T.)", l2_lower_bound_rows(lengths, capacity))
            bins, seconds = timed(pack, lengths, capacity)
            assert fill_stats(lengths, bins, capacity).max_row_tokens <= capacity
            line("ours: pack()", len(bins), seconds)
            bins, seconds = timed(first_fit_decreasing, lengths, capacity)
            line("first-fit decreasing", len(bins), seconds)
            bins, seconds = timed(best_fit_decreasing, lengths, capacity)
            line("best-fit decr. (whole)", len(bins), seconds)
            if trl_rows is None:
                table.append(f"{prefix} {'TRL pack_dataset bfd':<22} skipped")
            else:
                line("TRL pack_dataset bfd", *trl_rows(lengths, capacity))

            for n in (DOCS, BIG):
                many = make_lengths(n)
                many = many[many <= capacity]
                bins, seconds = timed(pack, many, capacity)
                stats = fill_stats(many, bins, capacity)
                timing.append(
                    f"pack() wall time, {name:<9} L={capacity}: {n:>7,} documents ({len(many):,} <= L) "
                    f"{seconds:5.2f} s; rows {stats.rows:,} (bound {stats.lower_bound_rows:,}: "
                    f"{'optimal' if stats.optimal else 'not proven optimal'})"
                )

    print("\n".join(table))
    print()
    print("\n".join(timing))
    print()
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
