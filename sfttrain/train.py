"""The trainer: setup, one loop, cleanup. Runs alone or under torchrun (DDP, or FSDP as an option).

The loss of an optimizer step is the sum of per-token losses over every target token of the step (all
micro-batches on all ranks) divided by their number. Each rank knows its micro-batches before the
first forward, so the count is all-reduced first and each micro-batch's summed loss is scaled by
world_size / count before backward (DDP and FSDP average gradients over ranks; the world_size undoes that).

The same per-token losses, grouped by the input file each target's document came from, give the loss
per input (no extra forward); the eval split's loss is computed the same way, without gradients.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from sftdata.manifest import Manifest
from sftdata.shards import Row
from sfttrain.attention import FLAT, attention_kwargs, available_kernels, choose_attention
from sfttrain.checkpoint import latest_checkpoint, load_checkpoint, publish_model, save_checkpoint, unwrap
from sfttrain.config import TrainConfig
from sfttrain.loader import Batch, ShardLoader, collate
from sfttrain.loss import LeanLoss, target_losses
from sfttrain.metrics import MetricsLog
from sfttrain.model import count_parameters, load_model, merge_adapter, tokenizer_fingerprints


@dataclass
class Run:
    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: ShardLoader
    eval_loader: ShardLoader | None
    attention: str
    lean: LeanLoss | None
    autocast: object  # a context manager factory
    device: torch.device
    world_size: int
    step: int
    total_steps: int
    warmup: int
    log: MetricsLog


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The learning rate of step `step` (0-based) over the peak: linear warmup to 1, then cosine decay that
    would reach min_ratio at step `total`, one past the last, so no step of the run is spent at the floor."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


@contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Reduce gradients across ranks only on the step's last backward."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(type(model), "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


class LossTally:
    """Summed target losses and target counts per input of the build (one group for a build without
    inputs), added up over micro-batches and then over ranks."""

    def __init__(self, manifest: Manifest | None, device: torch.device):
        self.manifest = manifest if manifest is not None and manifest.inputs else None
        groups = len(self.manifest.inputs) if self.manifest else 1
        self.sums = torch.zeros(groups, dtype=torch.float64, device=device)
        self.counts = torch.zeros(groups, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, batch: Batch) -> None:
        if self.manifest is None:
            groups = np.zeros(len(batch.target_sources), dtype=np.int64)
        else:
            groups = self.manifest.input_of(batch.target_sources)
        index = torch.from_numpy(groups).to(self.sums.device)
        self.sums.index_add_(0, index, losses.detach().double())
        self.counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))

    def reduce(self) -> LossTally:
        both = all_reduce(torch.stack([self.sums, self.counts]))
        self.sums, self.counts = both[0], both[1]
        return self

    @property
    def loss(self) -> float | None:
        count = float(self.counts.sum())
        return float(self.sums.sum()) / count if count else None

    def by_input(self) -> dict[str, float | None]:
        """Loss per input, named as input_names does; empty for a build of fewer than two inputs."""
        if self.manifest is None or len(self.manifest.inputs) < 2:
            return {}
        return {name: (float(s) / float(c) if c else None)
                for name, s, c in zip(input_names(self.manifest), self.sums.tolist(), self.counts.tolist())}


def input_names(manifest: Manifest) -> list[str]:
    """Short names of the build's inputs: file names, or whole paths where two file names are equal."""
    names = [Path(info.path).name for info in manifest.inputs]
    return [name if names.count(name) == 1 else info.path for name, info in zip(names, manifest.inputs)]


def batch_losses(model, batch: Batch, attention: str, lean: LeanLoss | None) -> torch.Tensor:
    """[targets] losses of a batch's target tokens, in the order of `batch.labels != IGNORE_INDEX`."""
    kwargs = attention_kwargs(batch.seq_lens, batch.position_ids, attention)
    if lean is not None:
        with lean.targets(batch.labels):
            return model(input_ids=batch.input_ids, use_cache=False, **kwargs).logits
    return target_losses(model(input_ids=batch.input_ids, use_cache=False, **kwargs).logits, batch.labels)


def forward_backward(model, batches: list[Batch], attention: str, autocast, device, world_size: int,
                     lean: LeanLoss | None = None, manifest: Manifest | None = None) -> tuple[LossTally, int]:
    """Gradients of one optimizer step. Returns the step's losses (summed over all ranks) and its tokens."""
    counts = torch.tensor([sum(b.num_targets for b in batches), sum(b.num_tokens for b in batches)],
                          dtype=torch.float64, device=device)
    targets, tokens = (int(c) for c in all_reduce(counts).tolist())
    tally = LossTally(manifest, device)
    if targets == 0:
        return tally.reduce(), tokens
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        with gradient_sync(model, enabled=i == len(batches) - 1):
            with autocast():
                losses = batch_losses(model, batch, attention, lean)
            (losses.sum() * (world_size / targets)).backward()
        tally.add(losses, batch)
    return tally.reduce(), tokens


def evaluate(run: Run) -> LossTally:
    """The loss of the eval split (every row once across ranks), without dropout or gradients."""
    tally = LossTally(run.loader.manifest, run.device)
    run.model.eval()
    with torch.no_grad():
        for batch in run.eval_loader.one_pass():
            batch = batch.to(run.device)
            with run.autocast():
                tally.add(batch_losses(run.model, batch, run.attention, run.lean), batch)
    run.model.train()
    return tally.reduce()


def train(cfg: TrainConfig) -> torch.nn.Module:
    """Run the training cfg describes; returns the trained model (unwrapped from DDP)."""
    owns_process_group = not dist.is_initialized()  # a caller that joined one itself keeps it
    try:
        run = setup(cfg)
        try:
            loop(run)
        finally:
            run.log.close()
        return unwrap(run.model)
    finally:
        if owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def loop(run: Run) -> None:
    cfg, model = run.cfg, run.model
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(run.loader)
    model.train()
    while run.step < run.total_steps:
        started = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        data_s = time.perf_counter() - started
        lr = cfg.lr * lr_factor(run.step, run.warmup, run.total_steps, cfg.min_lr_ratio)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        losses, tokens = forward_backward(model, micro, run.attention, run.autocast, run.device, run.world_size,
                                          run.lean, run.loader.manifest)
        targets = int(losses.counts.sum())
        grad_norm = None
        if targets:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf).item()
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        seconds = time.perf_counter() - started
        record = {"step": run.step, "epoch": run.loader.epoch, "loss": losses.loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": tokens, "target_tokens": targets, "tokens_per_s": tokens / seconds,
                  "target_tokens_per_s": targets / seconds, "step_s": seconds, "data_s": data_s,
                  "skipped": not targets}
        if by_input := losses.by_input():
            record["loss_by_input"] = by_input
        last = run.step == run.total_steps
        if run.eval_loader is not None and (last or (cfg.eval_every and run.step % cfg.eval_every == 0)):
            held_out = evaluate(run)
            record["eval_loss"] = held_out.loss
            if by_input := held_out.by_input():
                record["eval_loss_by_input"] = by_input
        run.log.step(record, write=run.step % cfg.log_every == 0 or last or "eval_loss" in record)
        if (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or last:
            path = save_checkpoint(Path(cfg.out), run.step, model, run.optimizer, run.loader, cfg.model,
                                   run.total_steps)
            run.log.print(f"checkpoint: {path}")
    out = Path(cfg.out)
    publish_model(out)
    shipped = f"adapter in {out / 'model'}" if cfg.lora else f"model in {out / 'model'}"
    if cfg.merge:
        if not dist.is_initialized() or dist.get_rank() == 0:
            merge_adapter(cfg.model, out / "model", out / "merged")
        if dist.is_initialized():
            dist.barrier()
        shipped += f", merged model in {out / 'merged'}"
    run.log.print(f"done: {run.step} steps; {shipped}")


def lean_loss(model: torch.nn.Module, cfg: TrainConfig, attention: str, autocast, device) -> tuple[LeanLoss | None, str]:
    """The lean loss when it is asked for and exact for this model (checked with one small forward), and
    a sentence saying which loss the run uses."""
    if not cfg.lean_loss:
        return None, "plain (lean_loss off): every position's logits"
    refusal = LeanLoss.refusal(model)
    if refusal is None:
        lean = LeanLoss(model)
        mask = np.r_[0, np.ones(7)].astype(np.uint8)
        probe = collate([Row(np.arange(1, 9, dtype=np.int32), mask, [8], [0])], flat=attention in FLAT).to(device)

        def plain_forward():
            kwargs = attention_kwargs(probe.seq_lens, probe.position_ids, attention)
            with torch.no_grad(), autocast():
                return model(input_ids=probe.input_ids, use_cache=False, **kwargs).logits, probe.input_ids

        was_training = model.training
        model.eval()
        refusal = lean.check(plain_forward)
        model.train(was_training)
        if refusal is None:
            return lean, f"lean: target tokens only, {lean.chunk_rows:,} rows at a time through the output layer"
        lean.remove()
    return None, f"plain (the lean loss would not be exact: {refusal})"


def setup(cfg: TrainConfig) -> Run:
    rank, world_size, device = init_distributed()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not cfg.resume:
        raise FileExistsError(f"{out} already has checkpoints ({checkpoint.name}): pass --resume to continue "
                              "that run, or choose another --out")
    if not cfg.resume:
        checkpoint = None
    if cfg.log_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401 (torch.utils.tensorboard needs it)
        except ImportError:
            raise ValueError("log_to tensorboard needs the tensorboard package: pip install tensorboard") from None
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    attention = choose_attention(cfg.attn_implementation, device.type, bf16, **available_kernels())
    fingerprints = tokenizer_fingerprints(cfg.model)
    loaders = {
        split: ShardLoader(
            cfg.data, tokenizer_fingerprints=fingerprints, model_dir=cfg.model,
            batch_size=cfg.batch_size, grad_accum=cfg.grad_accum if split == "train" else 1, seed=cfg.seed, rank=rank,
            world_size=world_size, bucket_batches=cfg.bucket_batches, flat=attention in FLAT, split=split)
        for split in ("train", "eval")
    }
    loader, eval_loader = loaders["train"], loaders["eval"] if len(loaders["eval"].store) else None
    total_steps = cfg.max_steps or cfg.epochs * loader.steps_per_epoch
    model = load_model(cfg, attention, device, checkpoint)
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if bf16 else nullcontext
    lean, loss_note = lean_loss(model, cfg, attention, autocast, device)
    sizes = count_parameters(model)  # before FSDP shards it
    model = wrap_distributed(model, cfg, device, world_size)
    torch.manual_seed(cfg.seed + rank)  # dropout differs across ranks; restored from the checkpoint on resume
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    step, planned = load_checkpoint(checkpoint, model, optimizer, loader) if checkpoint else (0, total_steps)
    log = MetricsLog(out, rank == 0, total_steps, step, cfg.progress, tensorboard=cfg.log_to == "tensorboard")
    run = Run(cfg, model, optimizer, loader, eval_loader, attention, lean, autocast, device, world_size, step,
              total_steps, cfg.warmup(total_steps), log)
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        describe(run, sizes, bf16, loss_note, checkpoint, planned)
    return run


def describe_data(manifest: Manifest, train_rows: int, max_length: int | None) -> str:
    """What a build holds, in words: documents, records, inputs, rows, packing, tokens, the eval split."""
    c, held = manifest.counts, manifest.eval
    documents = c.documents - (held.documents if held else 0)
    records = c.records_written - (held.records if held else 0)
    tokens = c.tokens - (held.tokens if held else 0)
    trained = c.trained_tokens - (held.trained_tokens if held else 0)
    layout = (f"packed {documents / max(1, train_rows):.1f} to a row of up to {max_length:,} tokens"
              if manifest.config.pack else "one per row")
    text = (f"{documents:,} documents from {records:,} records ({layout}: {train_rows:,} rows), "
            f"{tokens:,} tokens of which {trained:,} are trained")
    if manifest.inputs:
        files = ", ".join(f"{name} ({info.records_written:,} records)"
                          for name, info in zip(input_names(manifest), manifest.inputs))
        text += f"; {len(manifest.inputs)} input{'s' if len(manifest.inputs) > 1 else ''}: {files}"
    if c.rejected:
        text += f"; {c.rejected:,} records were rejected by the build"
    if held:
        text += (f"; held out for evaluation: {held.documents:,} documents from {held.records:,} records "
                 f"({held.rows:,} rows, {held.trained_tokens:,} trained tokens)")
    else:
        text += "; no eval split (sftdata build --eval-fraction F makes one)"
    return text


def schedule_note(run: Run, checkpoint: Path | None, planned: int) -> str:
    """How the run starts, and what a changed length does to the learning rate schedule."""
    if checkpoint is None:
        return "--resume: no checkpoint yet, starting at step 0" if run.cfg.resume else "starting at step 0"
    note = f"resuming from {checkpoint} at step {run.step}"
    if planned != run.total_steps:
        def lr(total):
            return run.cfg.lr * lr_factor(run.step, run.cfg.warmup(total), total, run.cfg.min_lr_ratio)

        note += (f"; the checkpoint's run was to last {planned} steps and this one {run.total_steps}: warmup and "
                 f"cosine are recomputed for {run.total_steps} steps, so the learning rate of step {run.step + 1} is "
                 f"{lr(run.total_steps):.3g} (it was to be {lr(planned):.3g})")
    return note


def describe(run: Run, sizes: tuple[int, int], bf16: bool, loss_note: str, checkpoint: Path | None,
             planned: int) -> None:
    """The settings and what they resolved to, printed once at the start."""
    cfg, loader = run.cfg, run.loader
    settings = yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip().splitlines()
    run.log.print("sfttrain settings:\n" + "\n".join("  " + line for line in settings))
    evaluation = ("at the end" + (f" and every {cfg.eval_every} steps" if cfg.eval_every else "")
                  if run.eval_loader else "none")
    run.log.print(
        f"data: {describe_data(loader.manifest, len(loader.store), loader.manifest.config.max_length)}\n"
        f"world: {run.world_size} x {run.device.type}, attention {run.attention}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}; loss {loss_note}\n"
        f"schedule: {loader.steps_per_epoch} steps per epoch, {run.total_steps} to run; lr {cfg.lr:g} after "
        f"{run.warmup} warmup steps, cosine to {cfg.lr * cfg.min_lr_ratio:g}; evaluation {evaluation}; "
        f"checkpoints {f'every {cfg.checkpoint_every} steps and ' if cfg.checkpoint_every else ''}at the end\n"
        f"parameters: {sizes[0]:,} trainable of {sizes[1]:,}\n{schedule_note(run, checkpoint, planned)}"
    )


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), world_size, device


def wrap_distributed(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world_size: int):
    if world_size == 1:
        return model
    if cfg.distributed == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if cfg.lora else model
    blocks = set(getattr(base, "_no_split_modules", None) or [])
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block class (_no_split_modules) to shard")
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model
