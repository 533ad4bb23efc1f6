"""sftdata: exact per-token loss masks for supervised fine-tuning data.

A build's stages, one module each, in the order a record flows through them (the types passed between
them are in records.py):

    sources      files -> RawRecord
    formats      RawRecord -> Conversation (messages, ShareGPT, Alpaca, prompt/completion)
    template     the model's Jinja chat template, sandboxed (passthrough: proof a template copies text)
    probe        the header and end-of-turn token of an assistant turn, probed once per template
    spans        Conversation -> Rendered: the text and where each message landed, which characters train
    turns        which documents a record needs so each trained turn trains in the context it is generated in
    tokenizer    loading and caching the tokenizer (token_bytes, tiktoken_bpe: what tokens spell, and a
                 faster engine where it gives the same ids)
    encoding     Rendered -> tokens with their character offsets
    masking      tokens -> Document: the loss mask, verified against the masking contract
    truncation   over-long documents, by policy
    packing      documents -> rows (lengths only)
    shards       rows -> Arrow files (storage.py: local paths and fsspec URLs alike)

worker.py is what one batch goes through (sources aside); units.py the build's phases (plan units, map
each unit to a spill, plan rows from lengths, write shards); executors/ is where they run (local: this
process and a process pool; ray: a Ray cluster); builder.py wires it together and writes the manifest
(manifest.py, the typed record of a finished build) from the validated settings (config.py). inspect/
holds the commands that read a finished build (view, diff, stats, report, verify).

The Python API (api.py): `sftdata.build(inputs, out, tokenizer=..., **settings)` and
`sftdata.open_build(out)`. Its names are loaded on first use, so `import sftdata` stays cheap.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "build": "api", "open_build": "api", "Build": "api",
    "BuildConfig": "config", "ConfigError": "config",
    "Manifest": "manifest", "ManifestError": "manifest",
    "BuildError": "builder", "OutDirError": "out_dir", "InputError": "sources", "TokenizerError": "tokenizer",
    "TemplateRenderError": "template",
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'sftdata' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})  # so a notebook completes the API's names before their first use
