"""How fast sfttrain's loader delivers tokens, and what share of a CPU training step it takes.

    python -m bench.bench_loader [--rows 1000] [--length 2048] [--batch-size 8] [--train-steps 12]

Everything is measured in this run, on synthetic shards written to a temporary folder (warm page cache):
  - raw:    the same Arrow columns (input_ids, loss_mask, seq_lens) read memory-mapped in storage order and
            turned into int64 tensors, with no shuffling, batching, labels or positions: the floor.
  - loader: ShardLoader over one epoch (shuffled, collated into padded batches with labels and position ids).
  - step:   sfttrain's own training loop (LoRA, fp32 on CPU) on a small Llama, where the loop itself
            times the loader (data_s) and the whole step (step_s) for every step; the first step is
            left out as warm-up. The loop's own settings and progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sftdata.config import BuildConfig
from sftdata.manifest import Manifest, TokenizerInfo
from sftdata.shards import Row, ShardWriter, open_shard

VOCAB = 1024


def make_model_dir(folder: Path, hidden: int, layers: int) -> None:
    """A word-level tokenizer of VOCAB made-up words and a random Llama that reads its ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    words = {"<unk>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "unk_token": "<unk>"}))
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 32), max_position_embeddings=8192)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))


def make_build(folder: Path, rows: int, length: int, fingerprint: str, packed: bool, seed: int = 0) -> int:
    """`rows` rows of documents 32..length/2 tokens long: packed into rows of exactly `length`, or one per row."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, shard_tokens=length * rows // 3 + 1)  # three shards or so
    tokens = 0
    for _ in range(rows):
        lens = []
        if packed:
            while sum(lens) < length:
                lens.append(int(min(rng.integers(32, length // 2), length - sum(lens))))
        else:
            lens = [int(rng.integers(32, length))]
        n = sum(lens)
        mask = np.ones(n, dtype=np.uint8)
        mask[np.cumsum(lens) - lens] = 0  # a document's first token is never a target
        writer.write(Row(rng.integers(1, VOCAB, n).astype(np.int32), mask, lens, list(range(len(lens)))))
        tokens += n
    tokenizer = TokenizerInfo(name="bench", fingerprint=fingerprint, vocab_size=VOCAB, prefix_ids=[], special_tokens={})
    config = BuildConfig(tokenizer="bench", max_length=length, pack=packed)
    Manifest.for_shards(writer.close(), tokenizer, config).write(folder)
    return tokens


def read_raw(build: Path) -> int:
    """The floor: every column buffer of every shard, memory-mapped, as int64 tensors."""
    manifest, tokens = Manifest.read(build), 0
    for shard in manifest.shards:
        for batch in open_shard(build / shard.name).to_batches():
            ids, _mask, _lens = (torch.from_numpy(batch.column(c).values.to_numpy().astype(np.int64))
                               for c in ("input_ids", "loss_mask", "seq_lens"))
            tokens += len(ids)
    return tokens


def read_loader(build: Path, model_dir: Path, batch_size: int) -> int:
    from sfttrain.loader import ShardLoader
    from sfttrain.model import tokenizer_fingerprints

    loader = ShardLoader(build, tokenizer_fingerprints=tokenizer_fingerprints(model_dir), model_dir=model_dir,
                         batch_size=batch_size)
    batches = iter(loader)
    return sum(next(batches).num_tokens for _ in range(loader.micro_batches_per_epoch))


def best_rate(fn, repeats: int = 5) -> float:
    """Tokens per second of the fastest of `repeats` runs (after one warm-up run)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        rates.append(tokens / (time.perf_counter() - start))
    return max(rates)


def train_share(build: Path, model_dir: Path, out: Path, batch_size: int, steps: int) -> tuple[float, float]:
    """(training tokens/s, loader share of the step time) over every step but the first (warm-up)."""
    from sfttrain.config import TrainConfig
    from sfttrain.train import train

    train(TrainConfig(data=str(build), model=str(model_dir), out=str(out), batch_size=batch_size, max_steps=steps,
                      progress=False, log_every=1))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    step_s = sum(r["step_s"] for r in records)
    return sum(r["tokens"] for r in records) / step_s, sum(r["data_s"] for r in records) / step_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="rows per build (loader measurements)")
    parser.add_argument("--length", type=int, default=2048, help="packed row length / longest document")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=512, help="packed row length for the training step")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256, help="small Llama: hidden size (4 heads of 64)")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    from rich.console import Console
    from rich.table import Table

    from sfttrain.model import tokenizer_fingerprints

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        make_model_dir(model_dir, args.hidden, args.layers)
        fingerprint = tokenizer_fingerprints(model_dir)[0]
        packed, unpacked, small = tmp / "packed", tmp / "unpacked", tmp / "train"
        make_build(packed, args.rows, args.length, fingerprint, packed=True)
        make_build(unpacked, args.rows, args.length, fingerprint, packed=False, seed=1)
        make_build(small, args.train_batch_size * (args.train_steps + 1), args.train_length, fingerprint, packed=True)

        raw_packed = best_rate(lambda: read_raw(packed))
        raw_unpacked = best_rate(lambda: read_raw(unpacked))
        loader_packed = best_rate(lambda: read_loader(packed, model_dir, args.batch_size))
        loader_unpacked = best_rate(lambda: read_loader(unpacked, model_dir, args.batch_size))
        train_rate, share = train_share(small, model_dir, tmp / "run", args.train_batch_size, args.train_steps)

    table = Table(title=f"sfttrain loader ({torch.get_num_threads()} CPU threads, torch {torch.__version__})")
    for col in ("measurement", "tokens/s", "ratio", "against"):
        table.add_column(col, justify="left" if col in ("measurement", "against") else "right")
    table.add_row("raw Arrow columns, packed build", f"{raw_packed:,.0f}", "1.000", "itself")
    table.add_row(f"loader, packed rows of {args.length}, batches of {args.batch_size}", f"{loader_packed:,.0f}",
                  f"{loader_packed / raw_packed:.3f}", "raw, packed")
    table.add_row("raw Arrow columns, unpacked build", f"{raw_unpacked:,.0f}", "1.000", "itself")
    table.add_row(f"loader, unpacked rows bucketed, batches of {args.batch_size}", f"{loader_unpacked:,.0f}",
                  f"{loader_unpacked / raw_unpacked:.3f}", "raw, unpacked")
    table.add_row(f"training step: Llama {args.hidden}x{args.layers}, LoRA, fp32 CPU, "
                  f"{args.train_batch_size}x{args.train_length} packed", f"{train_rate:,.0f}",
                  f"{share:.5f}", "loader share of the step")
    table.add_row("loader throughput over what the step consumes", "",
                  f"{loader_packed / train_rate:,.0f}", "loader / training tokens/s")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
