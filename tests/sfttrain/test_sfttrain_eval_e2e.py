"""End to end with a held-out split: two inputs -> `sftdata build --eval-fraction` -> `sfttrain train` -> the
losses it logs per input and on the eval split, recomputed here from the shards with a plain forward."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sftdata.manifest import EVAL_DIR, Manifest
from sftdata.shards import iter_rows, open_shard
from sfttrain.attention import attention_kwargs
from sfttrain.cli import main
from sfttrain.loader import ShardLoader, collate
from sfttrain.loss import IGNORE_INDEX, token_losses
from sfttrain.model import tokenizer_fingerprints


def _write(path, count, question, answer, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(count):
            a, b = (int(x) for x in rng.integers(0, 10, 2))
            messages = [{"role": "user", "content": question.format(a=a, b=b)},
                        {"role": "assistant", "content": answer.format(a=a, b=b)}]
            f.write(json.dumps({"messages": messages}) + "\n")


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("two-inputs")
    _write(root / "fox.jsonl", 40, "The fox {a} and the dog {b}?", "The quick brown fox jumps over the lazy dog {a}.", 0)
    _write(root / "numbers.jsonl", 24, "Numbers: {a} {b}", "0 1 2 3 4 5 6 7 8 9 10 42 100 {b}", 1)
    out = root / "shards"
    cmd = [sys.executable, "-m", "sftdata", "build", str(root / "fox.jsonl"), str(root / "numbers.jsonl"),
           "--tokenizer", str(model_dir), "--out", str(out), "--max-length", "128", "--pack", "--eval-fraction",
           "0.25", "--workers", "1", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out


def _input_of(manifest: Manifest, source_id: int) -> str:
    """Which input file a record came from, counted out here from the manifest's per-input records."""
    for info in manifest.inputs:
        if source_id < info.records:
            return info.path.rsplit("/", 1)[-1]
        source_id -= info.records
    raise AssertionError(f"source id beyond the build's records: {source_id}")


def _plain_losses(model, rows, manifest) -> dict[str, list[float]]:
    """Per-input target losses of rows, one plain forward each (every logit, the SDPA block-causal mask)."""
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for row in rows:
            batch = collate([row])
            kwargs = attention_kwargs(batch.seq_lens, batch.position_ids, "sdpa")
            losses = token_losses(model(input_ids=batch.input_ids, **kwargs).logits, batch.labels)[0]
            start = 0
            for length, source in zip(row.seq_lens, row.source_ids):
                doc = slice(start, start + int(length))
                targets = batch.labels[0, doc] != IGNORE_INDEX
                out.setdefault(_input_of(manifest, int(source)), []).extend(losses[doc][targets].tolist())
                start += int(length)
    return out


def _means(losses: dict[str, list[float]]) -> tuple[float, dict[str, float]]:
    every = [x for values in losses.values() for x in values]
    return float(np.mean(every)), {name: float(np.mean(values)) for name, values in losses.items()}


def test_per_input_and_eval_losses_are_the_ones_a_plain_forward_gives(tmp_path, two_inputs, model_dir, capsys):
    from transformers import AutoModelForCausalLM

    manifest = Manifest.read(two_inputs)
    assert manifest.eval is not None and manifest.eval.records > 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(two_inputs), "--model", str(model_dir), "--out", str(run), "--finetune",
                 "full", "--batch-size", "2", "--grad-accum", "2", "--max-steps", "6", "--eval-every", "4",
                 "--lr", "3e-3", "--log-every", "1", "--progress"]) == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 6]  # every 4 steps, and at the end

    # what the run says it trains on, in words; one plain line per step, as stderr is not a terminal
    data_line = next(line for line in err.splitlines() if line.startswith("data: "))
    assert "2 inputs: fox.jsonl" in data_line and "numbers.jsonl" in data_line and "packed" in data_line
    assert f"held out for evaluation: {manifest.eval.documents} documents" in data_line
    assert sum(line.startswith("step ") and "eval_loss" in line for line in err.splitlines()) == 2
    assert "━" not in err  # no progress bar in a file

    # step 1 ran on the untouched model: its per-input losses are the base model's on the step's rows
    loader = ShardLoader(two_inputs, tokenizer_fingerprints=tokenizer_fingerprints(model_dir), model_dir=model_dir,
                         batch_size=2, grad_accum=2)
    batches = iter(loader)
    rows = [loader.store.row(int(i)) for _ in range(2) for i in next(batches).rows]
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    loss, by_input = _means(_plain_losses(base.eval(), rows, manifest))
    assert records[0]["loss"] == pytest.approx(loss, rel=1e-5)
    assert records[0]["loss_by_input"] == pytest.approx(by_input, rel=1e-5)

    # the last eval ran on the final model: the eval shards' losses under the model the run shipped
    eval_rows = [row for shard in manifest.eval.shards for row in iter_rows(open_shard(two_inputs / EVAL_DIR / shard.name))]
    final = AutoModelForCausalLM.from_pretrained(str(run / "model"), dtype=torch.float32, attn_implementation="sdpa")
    loss, by_input = _means(_plain_losses(final.eval(), eval_rows, manifest))
    assert set(by_input) == {"fox.jsonl", "numbers.jsonl"}
    assert records[-1]["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert records[-1]["eval_loss_by_input"] == pytest.approx(by_input, rel=1e-5)
    assert records[-1]["eval_loss"] < records[3]["eval_loss"]  # training went on between the two evals
