"""Training settings: one typed dataclass, the only place a default is written.

A YAML file and command-line flags both land here (flags win); unknown keys are an error that names
the closest known one, so a typo never silently trains with a default.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import asdict, dataclass, field, fields

CHOICES = {
    "finetune": ("lora", "full"),
    "attn_implementation": ("auto", "flash_attention_2", "sdpa", "eager"),
    "precision": ("auto", "bf16", "fp32"),
    "distributed": ("ddp", "fsdp"),
}


def _setting(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    # what to train, and where to write
    data: str = _setting("", "sftdata build directory (has manifest.json)")
    model: str = _setting("", "local Hugging Face causal LM directory (with tokenizer.json)")
    out: str = _setting("", "run directory: config, metrics.jsonl, checkpoints/, model/")

    # fine-tuning method
    finetune: str = _setting("lora", "lora: train peft LoRA adapters; full: train every weight")
    lora_r: int = _setting(16, "LoRA rank")
    lora_alpha: float = _setting(32.0, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _setting(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] = _setting(  # noqa: RUF009 (_setting returns a dataclass field)
        ["all-linear"], "module names to adapt, or all-linear (every linear layer but the output head)"
    )

    # batches and length of the run
    batch_size: int = _setting(4, "rows per micro-batch on each rank")
    grad_accum: int = _setting(1, "micro-batches per optimizer step on each rank")
    epochs: int = _setting(1, "passes over the data (ignored when max_steps is set)")
    max_steps: int | None = _setting(None, "optimizer steps to run; default: epochs x steps per epoch")
    seed: int = _setting(0, "seeds the data order, LoRA initialisation and dropout")
    bucket_batches: int = _setting(
        64, "unpacked rows: sort windows of this many batches by length so a batch pads little"
    )

    # optimizer and schedule
    lr: float = _setting(2e-4, "peak learning rate")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    adam_beta1: float = _setting(0.9, "AdamW beta1")
    adam_beta2: float = _setting(0.999, "AdamW beta2")
    warmup_steps: int = _setting(0, "linear warmup steps from 0 to lr")
    min_lr_ratio: float = _setting(0.0, "cosine decays to lr x this at the last step")
    grad_clip: float = _setting(1.0, "clip the global gradient norm to this; 0: no clipping")

    # how the model runs
    attn_implementation: str = _setting(
        "auto", "auto: flash_attention_2 on GPU when installed, else sdpa with a block-causal mask"
    )
    precision: str = _setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU")
    gradient_checkpointing: bool = _setting(False, "recompute activations in backward to save memory")
    distributed: str = _setting("ddp", "with several processes: ddp (replicated) or fsdp (sharded)")

    # outputs
    log_every: int = _setting(1, "log a metrics line every this many steps")
    checkpoint_every: int = _setting(0, "write a checkpoint every this many steps (0: only at the end)")
    resume: bool = _setting(False, "continue from the latest checkpoint in --out (fresh start if none)")
    progress: bool = _setting(True, "show a rich progress bar (metrics.jsonl is written either way)")

    def __post_init__(self) -> None:
        problems = []
        for name in ("data", "model", "out"):
            if not getattr(self, name):
                problems.append(f"{name} is required (--{name.replace('_', '-')})")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} is {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("lora_r", "batch_size", "grad_accum", "epochs", "log_every", "bucket_batches"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be at least 1, not {self.max_steps}")
        for name in ("warmup_steps", "checkpoint_every", "weight_decay", "grad_clip", "lr"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be within [0, 1], not {self.min_lr_ratio}")
        if problems:
            raise ValueError("invalid training settings:\n  " + "\n  ".join(problems))

    @property
    def lora(self) -> bool:
        return self.finetune == "lora"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Settings from YAML (or any mapping): unknown keys and wrong types are errors."""
        hints = typing.get_type_hints(cls)
        known = [f.name for f in fields(cls)]
        problems = []
        for key, value in data.items():
            key_name = key.replace("-", "_")
            if key_name not in known:
                near = difflib.get_close_matches(key_name, known, n=1)
                problems.append(f"unknown setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            elif not _matches(value, hints[key_name]):
                problems.append(f"{key} = {value!r} is not of type {_type_name(hints[key_name])}")
        if problems:
            raise ValueError("invalid training settings:\n  " + "\n  ".join(problems))
        return cls(**{k.replace("-", "_"): v for k, v in data.items()})


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if args:  # X | None
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint)
