"""Streaming sftdata shards into batches: memory-mapped rows, a deterministic plan per epoch, one collate.

The plan of an epoch depends only on (seed, epoch, the data, batch_size): rows are shuffled, grouped
into batches (unpacked rows: sorted by length inside windows so a batch pads little), the batches are
shuffled, and global batch g goes to rank g % world_size. Every row is in exactly one batch and every
batch on exactly one rank, so each row is seen once per epoch across the world. Optimizer step k takes
global batches [k * world * accum, (k + 1) * world * accum): the same rows whatever the split between
ranks and accumulation. Ranks short of a batch at the end of an epoch get an empty one (no targets),
so every rank runs the same number of steps.

A rank's position is two integers, (epoch, micro-batches taken in that epoch); with the seed that is
the whole state to resume mid-epoch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sftdata.manifest import EVAL_DIR, Manifest
from sftdata.shards import Row, open_shard, shard_columns
from sftdata.storage import join
from sfttrain.attention import position_ids
from sfttrain.loss import IGNORE_INDEX

PAD_ID = 0  # any id in the vocabulary: padding only ever attends to padding and is never a target


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length] int64
    labels: torch.Tensor  # [rows, length] int64, IGNORE_INDEX where nothing is trained
    position_ids: torch.Tensor  # [rows, length] int64, restarting at every document
    seq_lens: list[list[int]]  # per row: document lengths, then the padding as one more; sums == length
    num_tokens: int  # real tokens, padding excluded
    num_targets: int  # tokens with a label
    target_sources: np.ndarray  # [num_targets] source id (input record) of each target, in labels' order
    rows: np.ndarray  # global row indices in the build (empty for a filler batch)

    def to(self, device) -> Batch:
        move = {"device": device, "non_blocking": True}
        return dataclasses.replace(self, input_ids=self.input_ids.to(**move), labels=self.labels.to(**move),
                                   position_ids=self.position_ids.to(**move))


def collate(rows: Sequence[Row], flat: bool = False) -> Batch:
    """Rows -> tensors. The only place labels are made from loss masks.

    flat=False pads rows to the longest (padding is its own trailing "document"); flat=True joins all
    rows into a single row with no padding, for flash attention's varlen kernel. An empty list gives a
    one-token batch with no targets, which lets a rank take part in a step it has no data for.
    """
    if flat and rows:
        rows = [Row(np.concatenate([r.input_ids for r in rows]), np.concatenate([r.loss_mask for r in rows]),
                    [n for r in rows for n in r.seq_lens], [s for r in rows for s in r.source_ids])]
    length = max((len(r.input_ids) for r in rows), default=1)
    count = max(len(rows), 1)
    input_ids = np.full((count, length), PAD_ID, dtype=np.int64)
    labels = np.full((count, length), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((count, length), dtype=np.int64)
    sources = np.full((count, length), -1, dtype=np.int64)
    all_lens = []
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        lens = [int(x) for x in row.seq_lens]
        if sum(lens) != n:
            raise ValueError(f"a row of records {[int(s) for s in row.source_ids]} has {n} tokens but its seq_lens "
                             f"{lens} sum to {sum(lens)}: the shard is corrupt (`sftdata verify` names it)")
        input_ids[i, :n] = row.input_ids
        labels[i, :n] = np.where(row.loss_mask == 1, row.input_ids, IGNORE_INDEX)
        # A document's first token has no earlier token of its own document to be predicted from.
        starts = np.cumsum(lens) - lens
        if (labels[i, starts] != IGNORE_INDEX).any():
            warnings.warn("loss_mask marks the first token of a document as a target; it cannot be one and "
                          "is not trained (the shards break sftdata's contract)", stacklevel=2)
            labels[i, starts] = IGNORE_INDEX
        positions[i, :n] = position_ids(lens)
        sources[i, :n] = np.repeat(np.asarray(row.source_ids, dtype=np.int64), lens)
        positions[i, n:] = np.arange(length - n)
        all_lens.append(lens + ([length - n] if n < length else []))
    if not rows:
        all_lens = [[length]]
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        labels=torch.from_numpy(labels),
        position_ids=torch.from_numpy(positions),
        seq_lens=all_lens,
        num_tokens=sum(len(r.input_ids) for r in rows),
        num_targets=int((labels != IGNORE_INDEX).sum()),
        target_sources=sources[labels != IGNORE_INDEX],
        rows=np.zeros(0, dtype=np.int64),
    )


def plan_epoch(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket_batches: int = 0) -> list[np.ndarray]:
    """The epoch's batches of global row indices, the same on every rank.

    bucket_batches > 0 (unpacked rows): after shuffling, each window of bucket_batches * batch_size rows is
    sorted by length and cut into batches, and the batches are shuffled again.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if bucket_batches > 0:
        window = bucket_batches * batch_size
        order = np.concatenate(
            [w[np.argsort(lengths[w], kind="stable")] for w in np.split(order, range(window, len(order), window))]
        ) if len(order) else order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket_batches > 0:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def rank_batch_ids(num_batches: int, rank: int, world_size: int, grad_accum: int) -> np.ndarray:
    """Global batch index of each of this rank's micro-batches in an epoch; -1 where it gets an empty one."""
    steps = math.ceil(num_batches / (world_size * grad_accum))
    ids = np.arange(steps * grad_accum) * world_size + rank
    return np.where(ids < num_batches, ids, -1)


class RowStore:
    """The rows of a build's train or eval split, read through memory maps: only offsets are touched until a
    row is asked for."""

    def __init__(self, build_dir: str | Path, split: str = "train"):
        self.manifest = Manifest.read(build_dir)
        if split == "train":
            folder, shards = str(build_dir), self.manifest.shards
        else:
            folder, shards = join(str(build_dir), EVAL_DIR), self.manifest.eval.shards if self.manifest.eval else []
        self._batches, starts, lengths = [], [0], []
        for shard in shards:
            for columns in shard_columns(open_shard(join(folder, shard.name))):
                self._batches.append(columns)
                starts.append(starts[-1] + columns.rows)
                lengths.append(np.diff(columns.offsets[0]))
        self._starts = np.asarray(starts)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def row(self, index: int) -> Row:
        b = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._batches[b].row(index - self._starts[b])


def check_tokenizer(manifest: Manifest, build_dir, fingerprints: Sequence[str], model_dir) -> None:
    built = manifest.tokenizer.fingerprint
    if built not in fingerprints:
        raise ValueError(
            f"the shards in {build_dir} were tokenized with a different tokenizer than the model's:\n"
            f"  shards ({manifest.tokenizer.name}): {built}\n"
            f"  model  ({model_dir}): {fingerprints[0]}\n"
            f"Training on them would teach the model the wrong ids. Rebuild the shards with "
            f"`sftdata build ... --tokenizer {model_dir}`, or pass the --model they were built for."
        )


class ShardLoader:
    """This rank's micro-batches of a split, epoch after epoch, resumable from (epoch, step).

    The eval split is read the same way, one pass at a time (`one_pass`): every row once across ranks.
    """

    def __init__(self, build_dir, *, tokenizer_fingerprints: Sequence[str], model_dir, batch_size: int, grad_accum: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, bucket_batches: int = 64, flat: bool = False,
                 split: str = "train"):
        self.store = RowStore(build_dir, split)
        self.manifest = self.store.manifest
        check_tokenizer(self.manifest, build_dir, tokenizer_fingerprints, model_dir)
        if len(self.store) == 0 and split == "train":
            raise ValueError(f"{build_dir} holds no rows: nothing to train on")
        self.packed = self.manifest.config.pack
        self.batch_size, self.seed, self.flat = batch_size, seed, flat
        self.bucket_batches = 0 if self.packed else bucket_batches
        num_batches = math.ceil(len(self.store) / batch_size)
        self._ids = rank_batch_ids(num_batches, rank, world_size, grad_accum)
        self.micro_batches_per_epoch = len(self._ids)
        self.steps_per_epoch = len(self._ids) // grad_accum
        self.epoch, self.step = 0, 0
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"the checkpoint's data order comes from seed {state['seed']}, not {self.seed}")
        self.epoch, self.step = state["epoch"], state["step"]

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, plan_epoch(self.store.lengths, self.batch_size, self.seed, epoch, self.bucket_batches))
        return self._plan[1]

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self.step >= len(self._ids):
                self.epoch, self.step = self.epoch + 1, 0
            batch_id = self._ids[self.step]
            self.step += 1
            yield self._batch(self._batches(self.epoch), batch_id)

    def one_pass(self) -> Iterator[Batch]:
        """This rank's share of the split, once, in epoch 0's order (the loader's position is untouched)."""
        plan = self._batches(0)
        for batch_id in self._ids:
            yield self._batch(plan, batch_id)

    def _batch(self, plan: list[np.ndarray], batch_id: int) -> Batch:
        indices = plan[batch_id] if batch_id >= 0 else np.zeros(0, dtype=np.int64)
        batch = collate([self.store.row(int(i)) for i in indices], flat=self.flat)
        batch.rows = indices
        return batch
