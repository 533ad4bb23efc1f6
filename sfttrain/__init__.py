"""sfttrain: a thin PyTorch loop that fine-tunes a Hugging Face causal LM on sftdata's Arrow shards.

    sfttrain train --data shards/ --model ./model-dir --out run/ [--config run.yaml] [--lora-r 16 ...]
    torchrun --nproc-per-node 8 -m sfttrain train ...       # DDP; --distributed fsdp to shard

Where things are: config.py (every setting and its default), cli.py (YAML + flags), loader.py (shards ->
batches; labels are made there and nowhere else), attention.py (documents never see each other),
loss.py (the one shift), model.py (HF model, peft LoRA), checkpoint.py, metrics.py, train.py (the loop).

A run directory:
    config.yaml       the resolved settings
    metrics.jsonl     one line per logged step: loss, lr, grad_norm, tokens, target_tokens, tokens/s, ...
    checkpoints/      step-N/ (model/, trainer.pt, rank-R.pt) and `latest`; --resume continues from it
    model/            the final adapter (peft) or model (transformers), with the tokenizer files
"""
