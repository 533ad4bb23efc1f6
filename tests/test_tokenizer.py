"""Loading tokenizers: what transformers builds, cached so later builds skip importing transformers."""

import json
import subprocess
import sys

from sftdata.tokenizer import load_tokenizer

from .conftest import REPO, fixture_tokenizer


def test_cached_load_is_identical_and_skips_transformers(tmp_path):
    env = {"SFTDATA_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    script = (f"import sys, json; from sftdata.tokenizer import load_tokenizer; "
              f"t = load_tokenizer({fixture_tokenizer('llama2-spm')!r}); "
              "print(json.dumps([t.fingerprint, t.prefix_ids, t.special_texts, t.chat_template, "
              "'transformers' in sys.modules]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(2)]
    assert runs[0][:4] == runs[1][:4]
    assert runs[0][4] is True and runs[1][4] is False, "the second load should come from the cache"


def test_a_changed_tokenizer_file_is_not_served_from_the_cache(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("SFTDATA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tok"
    shutil.copytree(fixture_tokenizer("chatml-bpe"), folder)
    first = load_tokenizer(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    second = load_tokenizer(str(folder))
    assert first.chat_template != second.chat_template == config["chat_template"]


def test_the_cache_keeps_the_fingerprint_and_the_token_bytes(tmp_path, monkeypatch):
    import numpy as np

    from sftdata.tokenizer import tokenizer_fingerprint

    monkeypatch.setenv("SFTDATA_CACHE", str(tmp_path / "cache"))
    fresh = load_tokenizer(fixture_tokenizer("chatml-bpe"))
    cached = load_tokenizer(fixture_tokenizer("chatml-bpe"))
    assert "fingerprint" in cached.__dict__ and "token_bytes" in cached.__dict__, "served from the cache"
    assert cached.fingerprint == fresh.fingerprint == tokenizer_fingerprint(cached.backend)
    for field in ("buffer", "lengths", "starts"):
        assert np.array_equal(getattr(cached.token_bytes, field), getattr(fresh.token_bytes, field))
    assert cached.token_bytes.lengths.sum() == len(cached.token_bytes.buffer) > 0
