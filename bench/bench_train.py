"""Peak memory and time of a training step, plain loss against the lean loss, on CPU.

    python -m bench.bench_train [--rows 2] [--length 1024] [--hidden 64] [--layers 2]

A randomly initialised Qwen3-shaped model with Qwen3's vocabulary (151,936) and a small body, so the
output layer's logits are what a step's memory is made of (as in a real model with a long context). The
batch is packed rows of random documents, about half of whose tokens are targets. Each variant runs in a
fresh process (peak resident memory is a high-water mark): the model is made, one step runs (forward,
backward) and the process reports the rise of its peak resident memory over what it held just before the
step, the loss, and the median time of three more steps. Both variants get the same model and batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

QWEN3_VOCAB = 151_936


def make_model(hidden: int, layers: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=QWEN3_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=hidden // 4, tie_word_embeddings=False, max_position_embeddings=8192)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config)


def make_batch(rows: int, length: int):
    from sftdata.shards import Row
    from sfttrain.loader import collate

    rng = np.random.default_rng(0)
    packed = []
    for _ in range(rows):
        lens = []
        while sum(lens) < length:
            lens.append(int(min(rng.integers(64, 400), length - sum(lens))))
        ids = rng.integers(0, QWEN3_VOCAB, length).astype(np.int32)
        mask = np.zeros(length, dtype=np.uint8)
        start = 0
        for n in lens:  # the second half of each document trains
            mask[start + n // 2 : start + n] = 1
            start += n
        packed.append(Row(ids, mask, lens, list(range(len(lens)))))
    return collate(packed)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(variant: str, rows: int, length: int, hidden: int, layers: int) -> dict:
    """One variant, in this process: the rise in peak memory of the first step, its loss, and step times."""
    from sfttrain.loss import LeanLoss
    from sfttrain.train import forward_backward

    torch.set_num_threads(1)  # steady timings on a shared machine; the memory does not depend on it
    model = make_model(hidden, layers)
    batch = make_batch(rows, length)
    lean = LeanLoss(model) if variant == "lean" else None

    def step():
        losses, _ = forward_backward(model, [batch], "sdpa", nullcontext, torch.device("cpu"), 1, lean=lean)
        model.zero_grad(set_to_none=True)
        return losses.loss

    before = resident_bytes()
    loss = step()
    peak = peak_resident_bytes() - before
    times = []
    for _ in range(3):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"variant": variant, "peak_step_bytes": peak, "loss": loss, "step_s": statistics.median(times),
            "targets": batch.num_targets, "tokens": batch.num_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "lean"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = [str(args.rows), str(args.length), str(args.hidden), str(args.layers)]
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.length, args.hidden, args.layers)))
        return
    results = {}
    for variant in ("plain", "lean"):
        cmd = [sys.executable, "-m", "bench.bench_train", "--rows", shape[0], "--length", shape[1], "--hidden",
               shape[2], "--layers", shape[3], "--child", variant]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    plain, lean = results["plain"], results["lean"]
    print(f"Qwen3 vocabulary {QWEN3_VOCAB:,}, hidden {args.hidden}, {args.layers} layers; {args.rows} packed rows x "
          f"{args.length} tokens, {plain['targets']:,} targets; fp32 CPU, 1 thread")
    print("| loss | step peak memory (MiB) | ratio | step time (s) | ratio | loss value |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in (plain, lean):
        print(f"| {r['variant']} | {r['peak_step_bytes'] / 2**20:,.0f} | {r['peak_step_bytes'] / plain['peak_step_bytes']:.3f} "
              f"| {r['step_s']:.3f} | {r['step_s'] / plain['step_s']:.3f} | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
