"""Checkpoints: everything a run needs to continue bit for bit, written so a crash never leaves half of one.

    out/checkpoints/
        step-00000100/
            model/           the adapter (peft) or the full model (transformers), plus tokenizer files;
                             the last one is copied to out/model when the run ends
            trainer.pt       optimizer, step, world size, the schedule's length (the LR is a function of the step)
            rank-00000.pt    per rank: loader position (seed, epoch, step) and every RNG state
        latest               name of the newest complete checkpoint

Every rank writes into step-N.tmp/, and rank 0 renames it to step-N/ and then rewrites `latest` (each a
single atomic rename) only after all ranks are done. Model and optimizer states are gathered to full
tensors through torch.distributed.checkpoint's state-dict helpers, which handle plain, DDP and FSDP
models alike; frozen base weights of a LoRA run are never gathered or written.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_optimizer_state_dict,
)

from sfttrain.model import export_model

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, loader, model_dir, total_steps: int) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's directory."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash in the middle of a save
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=GATHER)
    if _rank() == 0:
        export_model(unwrap(model), model_state, tmp / "model", model_dir)
        trainer = {"optimizer": optim_state, "step": step, "total_steps": total_steps, "world_size": _world()}
        torch.save(trainer, tmp / "trainer.pt")
    torch.save({"loader": loader.state_dict(), "rng": rng_state()}, tmp / f"rank-{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
    _barrier()
    return final


def publish_model(run_dir: Path) -> None:
    """Copy the latest checkpoint's model to out/model, where users look for it (rank 0; atomic rename)."""
    if _rank() == 0:
        source, target = latest_checkpoint(run_dir) / "model", Path(run_dir) / "model"
        tmp = target.with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    _barrier()


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    return pointer.parent / pointer.read_text().strip()


def load_checkpoint(path: Path, model, optimizer, loader) -> tuple[int, int]:
    """Restore optimizer, loader and RNG (the weights were loaded with the model).

    Returns the step and the number of steps the run that wrote it was to run.
    """
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    if trainer["world_size"] != _world():
        raise ValueError(
            f"{path} was written by {trainer['world_size']} ranks and this run has {_world()}: the data "
            f"position is kept per rank, so resume with --nproc-per-node/--nnodes giving {trainer['world_size']}"
        )
    set_optimizer_state_dict(model, optimizer, trainer["optimizer"], options=GATHER)
    own = torch.load(path / f"rank-{_rank():05d}.pt", map_location="cpu", weights_only=False)
    loader.load_state_dict(own["loader"])
    set_rng_state(own["rng"])
    return trainer["step"], trainer["total_steps"]
