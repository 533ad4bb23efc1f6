"""The model: any Hugging Face causal LM from a local directory, with peft LoRA adapters or fully trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sfttrain.attention import model_attention
from sfttrain.config import TrainConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def tokenizer_fingerprints(model_dir: str | Path) -> tuple[str, ...]:
    """Fingerprints (as sftdata writes them in the manifest) of the tokenizer the model directory ships.

    The first is what sftdata computes: the backend of the tokenizer transformers loads from the folder
    (transformers may adjust it: padding, added tokens). The second is of tokenizer.json read as is,
    which a build that loaded the file directly would have written; both name the same tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from sftdata.tokenizer import tokenizer_fingerprint as fingerprint

    if not (Path(model_dir) / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer.json: sfttrain checks that the shards were built with the model's "
            "own tokenizer; copy the tokenizer files the shards were built with into the model directory"
        )
    loaded = fingerprint(AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer)
    return loaded, fingerprint(Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")))


def load_model(cfg: TrainConfig, attention: str, device: torch.device, checkpoint: Path | None = None):
    """The trainable model on `device`, in fp32 (bf16 comes from autocast), from a checkpoint when resuming.

    A full fine-tune resumes from the checkpoint's saved model; a LoRA run loads the base model again
    and the checkpoint's adapter on top of it.
    """
    from transformers import AutoModelForCausalLM

    full_resume = checkpoint is not None and not cfg.lora
    source = checkpoint / "model" if full_resume else cfg.model
    torch.manual_seed(cfg.seed)  # LoRA's initial weights
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32,
                                                 attn_implementation=model_attention(attention))
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # no need for inputs that require grad, so frozen embeddings work
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(checkpoint / "model"), is_trainable=True)
        else:
            targets = cfg.lora_target_modules
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets[0] if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    return model.to(device)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def export_model(model: torch.nn.Module, state_dict: dict, out_dir: Path, model_dir: str | Path) -> None:
    """Write what a user loads: a peft adapter directory, or a full model; plus the tokenizer files.

    `state_dict` holds the trainable weights, gathered whole from every rank (checkpoint.save_checkpoint).
    """
    model.save_pretrained(str(out_dir), state_dict=state_dict)
    copy_tokenizer(model_dir, out_dir)


def copy_tokenizer(model_dir: str | Path, out_dir: Path) -> None:
    """The tokenizer files and chat template the model was trained with, beside its weights."""
    for name in TOKENIZER_FILES:
        if (Path(model_dir) / name).exists():
            shutil.copy2(Path(model_dir) / name, out_dir / name)


def merge_adapter(model_dir: str | Path, adapter_dir: Path, out_dir: Path) -> None:
    """A model folder of the base model with the LoRA adapter folded into its weights (no peft needed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    copy_tokenizer(model_dir, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
