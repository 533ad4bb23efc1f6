"""sfttrain's step on a CUDA GPU: packed rows against padded batches, the packed-attention backends, and
the lean loss's peak memory. A few minutes on any CUDA machine; nothing is downloaded.

    python -m bench.bench_train_gpu [--hidden 1024] [--layers 28] [--tokens 262144] [--row 4096]

The model is randomly initialised with Qwen3-0.6B's shape (vocabulary 151,936; about 0.6B parameters at
the defaults), fp32 weights under bf16 autocast as sfttrain trains them. The data are random documents of
long-tailed lengths (32 to --row tokens, half of each trained), the same documents in every measurement:
  - packed: rows of --row tokens filled by sftdata's packer, one row a micro-batch, under each backend
    this machine runs: varlen (torch.nn.attention.varlen), flex_attention (a document BlockMask),
    sdpa (the block-diagonal boolean mask), flash_attention_2 where flash-attn is installed;
  - padded: one document per row, bucketed by length as sfttrain's loader does for unpacked builds,
    batches of about --row tokens, sdpa;
tokens/s counts real tokens (no padding); each measurement runs one untimed pass first (compilation,
autotuning). Peak memory: torch.cuda.max_memory_allocated over a pass, plain loss against the lean loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import numpy as np
import torch

from bench.bench_train import QWEN3_VOCAB


def documents(total_tokens: int, row: int, seed: int = 0) -> list:
    from sftdata.shards import Row

    rng = np.random.default_rng(seed)
    docs, tokens = [], 0
    while tokens < total_tokens:
        n = int(np.clip(rng.lognormal(6.3, 0.9), 32, row))
        mask = np.zeros(n, dtype=np.uint8)
        mask[n // 2 :] = 1
        docs.append(Row(rng.integers(0, QWEN3_VOCAB, n).astype(np.int32), mask, [n], [len(docs)]))
        tokens += n
    return docs


def packed_batches(docs: list, row: int, flat: bool) -> list:
    from sftdata.packing import pack_arrays
    from sftdata.shards import Row
    from sfttrain.loader import collate

    order, offsets = pack_arrays(np.array([len(d.input_ids) for d in docs]), row, 0)
    rows = []
    for r in range(len(offsets) - 1):
        members = [docs[i] for i in order[offsets[r] : offsets[r + 1]]]
        rows.append(Row(np.concatenate([d.input_ids for d in members]), np.concatenate([d.loss_mask for d in members]),
                        [n for d in members for n in d.seq_lens], [s for d in members for s in d.source_ids]))
    return [collate([r], flat=flat) for r in rows]


def padded_batches(docs: list, row: int) -> list:
    from sfttrain.loader import collate, plan_epoch

    lengths = np.array([len(d.input_ids) for d in docs])
    per_batch = max(1, row // int(np.median(lengths)))
    return [collate([docs[i] for i in ids]) for ids in plan_epoch(lengths, per_batch, 0, 0, bucket_batches=64)]


def make_model(args, attention: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sfttrain.attention import model_attention

    config = Qwen3Config(vocab_size=QWEN3_VOCAB, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=True, max_position_embeddings=40960)
    config._attn_implementation = model_attention(attention)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config)
    model.config.use_cache = False
    return model.train()


def one_pass(model, batches, attention, lean) -> tuple[float, int, float]:
    """Seconds, real tokens and mean loss of forward+backward over every batch."""
    from sfttrain.train import forward_backward

    autocast = partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    device = torch.device("cuda")
    torch.cuda.synchronize()
    started = time.perf_counter()
    tokens, losses = 0, []
    for batch in batches:
        tally, n = forward_backward(model, [batch], attention, autocast, device, 1, lean=lean)
        model.zero_grad(set_to_none=True)
        tokens += n
        losses.append(tally.loss)
    torch.cuda.synchronize()
    return time.perf_counter() - started, tokens, float(np.mean(losses))


def measure(args, attention: str, batches: list, lean_loss: bool) -> dict:
    from sfttrain.loss import LeanLoss

    model = make_model(args, attention)
    lean = LeanLoss(model) if lean_loss else None
    one_pass(model, batches[:4], attention, lean)  # compile, autotune, allocator warm-up
    torch.cuda.reset_peak_memory_stats()
    seconds, tokens, loss = one_pass(model, batches, attention, lean)
    result = {"tokens_per_s": tokens / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": loss}
    del model, lean
    torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--tokens", type=int, default=1 << 18, help="tokens of documents in each pass")
    parser.add_argument("--row", type=int, default=4096, help="packed row length")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_train_gpu needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False); "
              "bench/bench_train.py measures the lean loss on CPU.", file=sys.stderr)
        return 2
    from sfttrain.attention import FLAT, available_kernels, choose_attention

    kernels = available_kernels()
    backends = [b for b in ("flash_attention_2", "varlen", "flex_attention")
                if _runs(b, kernels, choose_attention)] + ["sdpa"]
    docs = documents(args.tokens, args.row)
    params = sum(p.numel() for p in make_model(args, "sdpa").parameters())
    torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; random Qwen3-shaped model of {params / 1e9:.2f}B "
          f"parameters (hidden {args.hidden}, {args.layers} layers), fp32 weights, bf16 autocast; "
          f"{len(docs):,} documents, {sum(len(d.input_ids) for d in docs):,} tokens a pass")
    print("| layout | attention | loss | tokens/s | vs padded sdpa | peak GiB |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    padded = measure(args, "sdpa", padded_batches(docs, args.row), lean_loss=True)
    rows = [("padded", "sdpa", "lean", padded)]
    for backend in backends:
        batches = packed_batches(docs, args.row, flat=backend in FLAT)
        rows.append(("packed", backend, "lean", measure(args, backend, batches, lean_loss=True)))
    fastest = max(rows[1:], key=lambda r: r[3]["tokens_per_s"])[1]
    rows.append(("packed", fastest, "plain", measure(args, fastest, packed_batches(docs, args.row, fastest in FLAT),
                                                     lean_loss=False)))
    for layout, backend, loss, r in rows:
        print(f"| {layout} | {backend} | {loss} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / padded['tokens_per_s']:.2f} | {r['peak_gib']:.2f} |")
    return 0


def _runs(backend: str, kernels: dict, choose) -> bool:
    try:
        return choose(backend, "cuda", True, **kernels) == backend
    except ValueError:  # this machine lacks it: the table says which ran
        return False


if __name__ == "__main__":
    sys.exit(main())
