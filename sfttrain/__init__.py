"""sfttrain: a thin PyTorch loop that fine-tunes a Hugging Face causal LM on sftdata's Arrow shards.

    sfttrain train --data shards/ --model ./model-dir --out run/ [--config run.yaml] [--lora-r 16 ...]
    torchrun --nproc-per-node 8 -m sfttrain train ...
"""
