"""Run by test_sfttrain_torchrun.py under `torchrun --nproc-per-node 2` (gloo, CPU).

    torchrun_worker.py BUILD MODEL OUT [ddp|fsdp ...]

Each rank writes the rows its loader gives it over one epoch to OUT/rows-RANK.json, then trains once
per named engine into OUT/ENGINE/, and once more into OUT/ENGINE-resumed/ resuming from a copy of the
step-2 checkpoint alone (what a run killed after that checkpoint leaves behind).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from sfttrain.config import TrainConfig
from sfttrain.loader import ShardLoader
from sfttrain.model import tokenizer_fingerprints
from sfttrain.train import init_distributed, train


def settings(build: str, model: str, out: str, **overrides) -> TrainConfig:
    """Shared with the test: what the two-rank runs and the one-process reference train with."""
    base = {"data": build, "model": model, "out": out, "batch_size": 2, "grad_accum": 1, "max_steps": 4, "lr": 1e-2,
            "lora_dropout": 0.0, "checkpoint_every": 2, "progress": False, "seed": 5}
    return TrainConfig(**{**base, **overrides})


def main() -> None:
    build, model, out, engines = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
    rank, world_size, _ = init_distributed()
    loader = ShardLoader(build, tokenizer_fingerprints=tokenizer_fingerprints(model), model_dir=model, batch_size=2,
                         rank=rank, world_size=world_size, seed=5)
    batches = iter(loader)
    rows = [next(batches).rows.tolist() for _ in range(loader.micro_batches_per_epoch)]
    (out / f"rows-{rank}.json").write_text(json.dumps({"world_size": world_size, "rows": rows}))
    for engine in engines:  # train() keeps the process group this script joined
        train(settings(build, model, str(out / engine), distributed=engine))
        resumed = out / f"{engine}-resumed" / "checkpoints"
        if rank == 0:
            shutil.copytree(out / engine / "checkpoints" / "step-00000002", resumed / "step-00000002")
            (resumed / "latest").write_text("step-00000002\n")
        dist.barrier()
        train(settings(build, model, str(resumed.parent), distributed=engine, resume=True))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
