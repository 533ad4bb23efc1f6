"""The trainer: setup, one loop, cleanup. Runs alone or under torchrun (DDP, or FSDP as an option).

The loss of an optimizer step is the sum of per-token losses over every target token of the step (all
micro-batches on all ranks) divided by their number. Each rank knows its micro-batches before the
first forward, so the count is all-reduced first and each micro-batch's summed loss is scaled by
world_size / count before backward (DDP and FSDP average gradients over ranks; the world_size undoes that).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from sfttrain.attention import attention_kwargs
from sfttrain.checkpoint import latest_checkpoint, load_checkpoint, publish_model, save_checkpoint
from sfttrain.config import TrainConfig
from sfttrain.loader import Batch, ShardLoader
from sfttrain.loss import loss_sum
from sfttrain.metrics import MetricsLog
from sfttrain.model import count_parameters, load_model, resolve_attention, tokenizer_fingerprints


@dataclass
class Run:
    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: ShardLoader
    attention: str
    autocast: object  # a context manager factory
    device: torch.device
    world_size: int
    step: int
    total_steps: int
    log: MetricsLog


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to min_ratio at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
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


def forward_backward(model, batches: list[Batch], attention: str, autocast, device, world_size: int) -> tuple:
    """Gradients of one optimizer step. Returns (loss, target tokens, tokens), summed over all ranks."""
    counts = torch.tensor([sum(b.num_targets for b in batches), sum(b.num_tokens for b in batches)],
                          dtype=torch.float64, device=device)
    targets, tokens = (int(c) for c in all_reduce(counts).tolist())
    if targets == 0:
        return None, 0, tokens
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        with gradient_sync(model, enabled=i == len(batches) - 1):
            with autocast():
                kwargs = attention_kwargs(batch.seq_lens, batch.position_ids, attention)
                logits = model(input_ids=batch.input_ids, use_cache=False, **kwargs).logits
            summed = loss_sum(logits, batch.labels)
            (summed * (world_size / targets)).backward()
        total += summed.detach()
    return all_reduce(total).item() / targets, targets, tokens


def train(cfg: TrainConfig) -> None:
    owns_process_group = not dist.is_initialized()  # a caller that joined one itself keeps it
    try:
        run = setup(cfg)
        try:
            loop(run)
        finally:
            run.log.close()
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
        loss, targets, tokens = forward_backward(model, micro, run.attention, run.autocast, run.device, run.world_size)
        grad_norm = None
        if targets:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf).item()
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        lr = run.scheduler.get_last_lr()[0]
        advance(run.scheduler)
        run.step += 1
        seconds = time.perf_counter() - started
        run.log.step(
            {"step": run.step, "epoch": run.loader.epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
             "tokens": tokens, "target_tokens": targets, "tokens_per_s": tokens / seconds,
             "target_tokens_per_s": targets / seconds, "step_s": seconds, "data_s": data_s, "skipped": not targets},
            write=run.step % cfg.log_every == 0 or run.step == run.total_steps,
        )
        if (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or run.step == run.total_steps:
            path = save_checkpoint(Path(cfg.out), run.step, model, run.optimizer, run.scheduler, run.loader, cfg.model)
            run.log.print(f"checkpoint: {path}")
    publish_model(Path(cfg.out))
    run.log.print(f"done: {run.step} steps; {'adapter' if cfg.lora else 'model'} in {Path(cfg.out) / 'model'}")


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Step the LR schedule, which follows the step count, skipped steps included."""
    with warnings.catch_warnings():  # after a skipped first step torch warns that no optimizer step came first
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()


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
    attention = resolve_attention(cfg.attn_implementation, device)
    loader = ShardLoader(
        cfg.data, tokenizer_fingerprints=tokenizer_fingerprints(cfg.model), model_dir=cfg.model,
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed, rank=rank, world_size=world_size,
        bucket_batches=cfg.bucket_batches, flat=attention == "flash_attention_2",
    )
    total_steps = cfg.max_steps or cfg.epochs * loader.steps_per_epoch
    model = load_model(cfg, attention, device, checkpoint)
    sizes = count_parameters(model)  # before FSDP shards it
    model = wrap_distributed(model, cfg, device, world_size)
    torch.manual_seed(cfg.seed + rank)  # dropout differs across ranks; restored from the checkpoint on resume
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    schedule = partial(lr_factor, warmup=cfg.warmup_steps, total=total_steps, min_ratio=cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step = load_checkpoint(checkpoint, model, optimizer, scheduler, loader) if checkpoint else 0
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if bf16 else nullcontext
    log = MetricsLog(out, rank == 0, total_steps, step, cfg.progress)
    run = Run(cfg, model, optimizer, scheduler, loader, attention, autocast, device, world_size, step, total_steps,
              log)
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        describe(run, sizes, bf16, checkpoint)
    return run


def describe(run: Run, sizes: tuple[int, int], bf16: bool, checkpoint: Path | None) -> None:
    """The settings and what they resolved to, printed once at the start."""
    cfg, loader = run.cfg, run.loader
    c = loader.manifest.counts
    counts = (f"{c.documents:,} documents of {c.records:,} records ({c.rejected:,} rejected), "
              f"{c.trained_tokens:,} trained tokens")
    resumed = f"resuming from {checkpoint} at step {run.step}" if checkpoint else (
        "--resume: no checkpoint yet, starting at step 0" if cfg.resume else "starting at step 0")
    run.log.print("sfttrain settings:\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    run.log.print(
        f"data: {len(loader.store):,} rows ({'packed' if loader.packed else 'unpacked'}), "
        f"{int(loader.store.lengths.sum()):,} tokens; manifest: {counts}\n"
        f"world: {run.world_size} x {run.device.type}, attention {run.attention}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}; {loader.steps_per_epoch} steps per epoch, {run.total_steps} to run\n"
        f"parameters: {sizes[0]:,} trainable of {sizes[1]:,}\n{resumed}"
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
