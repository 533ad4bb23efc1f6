"""Training on an sftdata build with a trainer of your own: each recipe feeds sftdata's tokens and loss
mask to that trainer as they are, so it never tokenizes or masks anything itself (README: "Bring your
own trainer"). tests/test_recipes.py runs each on CPU and checks its loss is sftdata's masked loss."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

import sftdata
from sftdata.tokenizer import tokenizer_fingerprint


def tokenizer_of(built: sftdata.Build, tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer the build was made with (`tokenizer`, else the one its manifest names), refused
    when it tokenizes differently from the build's (its fingerprint differs), as sfttrain refuses it."""
    name = tokenizer or built.manifest.tokenizer.name
    loaded = AutoTokenizer.from_pretrained(name)
    if tokenizer_fingerprint(loaded.backend_tokenizer) != built.manifest.tokenizer.fingerprint:
        raise ValueError(f"{built.path} was built with another tokenizer than {name} "
                         f"(fingerprint {built.manifest.tokenizer.fingerprint[:12]}): rebuild it with this one")
    return loaded
