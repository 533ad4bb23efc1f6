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
    "attn_implementation": ("auto", "flash_attention_2", "varlen", "flex_attention", "sdpa", "eager"),
    "precision": ("auto", "bf16", "fp32"),
    "distributed": ("ddp", "fsdp"),
    "log_to": ("jsonl", "tensorboard"),
}
# Peak learning rates that suit each method: adapters take far larger steps than the weights themselves.
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}
WARMUP_SHARE = 0.03  # warmup_steps left unset: this share of the run's steps (at least 1)


def _setting(default, help: str, shown: str | None = None, **kw):
    """A field with its help; `shown` is how --help describes a default of None (which is resolved later)."""
    metadata = {"help": help, "shown": shown}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


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
    lr: float | None = _setting(None, "peak learning rate",
                                shown=f"{DEFAULT_LR['lora']:g} for LoRA, {DEFAULT_LR['full']:g} for full fine-tuning")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    adam_beta1: float = _setting(0.9, "AdamW beta1")
    adam_beta2: float = _setting(0.999, "AdamW beta2")
    warmup_steps: int | None = _setting(None, "linear warmup steps up to lr",
                                        shown=f"{WARMUP_SHARE:.0%} of the steps, at least 1")
    min_lr_ratio: float = _setting(0.1, "cosine decays towards lr x this, reached one step after the last "
                                        "(so the last step still learns)")
    grad_clip: float = _setting(1.0, "clip the global gradient norm to this; 0: no clipping")

    # how the model runs
    attn_implementation: str = _setting(
        "auto", "auto: on GPU flash_attention_2 when flash-attn is installed, else torch's varlen kernel (bf16, "
        "Ampere or newer), else flex_attention with a document mask; on CPU sdpa with a block-causal mask"
    )
    precision: str = _setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU")
    gradient_checkpointing: bool = _setting(False, "recompute activations in backward to save memory")
    lean_loss: bool = _setting(True, "compute the loss only at target tokens, through the output layer in chunks "
                                     "(equal to the plain loss; kept off for a model that changes its logits after "
                                     "the output layer)")
    distributed: str = _setting("ddp", "with several processes: ddp (replicated) or fsdp (sharded)")

    # outputs
    log_every: int = _setting(1, "log a metrics line every this many steps")
    log_to: str = _setting("jsonl", "metrics.jsonl always; tensorboard: also event files in out/tensorboard "
                                    "(needs the tensorboard package)")
    eval_every: int = _setting(0, "evaluate on the build's eval split every this many steps, and at the end "
                                  "(0: only at the end; nothing without an eval split)")
    checkpoint_every: int = _setting(500, "write a checkpoint every this many steps, and at the end (0: only at "
                                          "the end)")
    merge: bool = _setting(False, "LoRA: also write out/merged, the base model with the adapter merged in")
    resume: bool = _setting(False, "continue from the latest checkpoint in --out (fresh start if none)")
    progress: bool = _setting(True, "show a progress bar when writing to a terminal (otherwise one plain line "
                                    "per logged step); metrics.jsonl is written either way")

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
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "weight_decay", "grad_clip", "lr"):
            if (getattr(self, name) or 0) < 0:
                problems.append(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be within [0, 1], not {self.min_lr_ratio}")
        if self.merge and not self.lora:
            problems.append("merge needs finetune lora (a full fine-tune already saves the whole model)")
        if problems:
            raise ValueError("invalid training settings:\n  " + "\n  ".join(problems))
        if self.lr is None:
            self.lr = DEFAULT_LR[self.finetune]

    def warmup(self, total_steps: int) -> int:
        """Warmup steps of a run of total_steps: as set, or WARMUP_SHARE of it."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, round(WARMUP_SHARE * total_steps))

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
