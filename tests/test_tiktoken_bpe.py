"""tiktoken as the encoder of ranked byte-level BPE tokenizers: the same ids as the tokenizer, or not used."""

import copy
import json
import pickle
import shutil

import numpy as np
import pytest

from sftdata.encoding import encode, tokenize
from sftdata.records import Rendered
from sftdata.tiktoken_bpe import _probe_disagreements, ranked_pattern
from sftdata.tokenizer import _ranked_encoder, load_tokenizer, tokenizer_fingerprint

from .conftest import fixture_tokenizer, requires_shared, shared_tokenizer
from .traps import SPELLING_TEXTS

# what BPE engines are known to split differently: runs and periodic strings, contractions in any case,
# the long s and Kelvin sign that fold to ASCII letters, digits in groups, whitespace of every kind
TRICKY = [
    "-----=====______ababab abab aaaaaaa ....... !!!!!!",
    "I'LL WE'VE you'Re it'S ſ 'ſ K 'K",
    "1234567890 12 123 1234 ١٢٣٤ ½",
    "\t \n\n \r\n  \u00a0\u2003x\u3000y\u2028z",
    "def f(x):\n    return {'a': [1, 2]}  # café 日本語 🙂 e\u0301",
]


def ranked_copy_of(fixture: str, folder) -> str:
    """The fixture tokenizer made ranked the way a tiktoken conversion is: every pair of tokens that spells
    a token becomes a merge, merges ordered by the id of what they make."""
    shutil.copytree(fixture, folder)
    config = json.loads((folder / "tokenizer.json").read_text())
    vocab = config["model"]["vocab"]
    merges = sorted(((vocab[t], vocab[t[:k]], vocab[t[k:]]), [t[:k], t[k:]])
                    for t in vocab for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab)
    config["model"]["merges"] = [pair for _, pair in merges]
    (folder / "tokenizer.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def ranked_tok(tmp_path_factory):
    return load_tokenizer(ranked_copy_of(fixture_tokenizer("llama3-bpe"), tmp_path_factory.mktemp("t") / "ranked"))


def rendered(texts):
    return [Rendered(i, t, (), "sentinel") for i, t in enumerate(texts)]


def test_a_ranked_tokenizer_is_encoded_by_tiktoken_with_the_tokenizers_ids(ranked_tok):
    assert ranked_tok.ranked is not None and ranked_tok.ranked_encoder is not None
    texts = SPELLING_TEXTS + TRICKY
    encodings = encode(rendered(texts), ranked_tok)
    assert all(isinstance(e, np.ndarray) for e in encodings), "every one of these texts goes to tiktoken"
    for text, ids in zip(texts, encodings):
        assert ids.tolist() == ranked_tok.backend.encode(text, add_special_tokens=False).ids, text


def test_tokenizers_that_tiktoken_would_encode_differently_are_not_admitted():
    trained = json.loads(open(fixture_tokenizer("llama3-bpe") + "/tokenizer.json").read())
    assert ranked_pattern(trained) is None, "a trained BPE lacks merges for pairs that spell a token"
    assert ranked_pattern(json.loads(open(fixture_tokenizer("chatml-bpe") + "/tokenizer.json").read())) is None
    assert ranked_pattern(json.loads(open(fixture_tokenizer("llama2-spm") + "/tokenizer.json").read())) is None


def test_each_structural_condition_is_checked(ranked_tok):
    config = json.loads(ranked_tok.backend.to_str())
    assert ranked_pattern(config) is not None

    def changed(edit):
        c = copy.deepcopy(config)
        edit(c)
        return ranked_pattern(c)

    merges = config["model"]["merges"]
    assert changed(lambda c: c["model"].update(ignore_merges=False)) is None
    assert changed(lambda c: c.update(normalizer={"type": "NFC"})) is None
    assert changed(lambda c: c["model"].update(merges=merges[:300] + merges[301:])) is None, "a missing pair"
    assert changed(lambda c: c["model"].update(merges=merges[:1] + [merges[-1]] + merges[1:-1])) is None, "order"
    assert changed(lambda c: c["added_tokens"].append({**c["added_tokens"][0], "id": 9999,
                                                         "content": c["added_tokens"][0]["content"] + "x"})) is None
    assert changed(lambda c: c["added_tokens"][0].update(lstrip=True)) is None
    assert changed(lambda c: c["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True)) is None


def test_a_batch_is_joined_by_a_separator_none_of_its_texts_holds(ranked_tok):
    encoder = ranked_tok.ranked_encoder
    first = encoder._separators[0]
    texts = ["a" + first + "b", "plain text", "x"]
    ids = encoder.encode_batch(texts)
    for text, got in zip(texts, ids):
        assert got.tolist() == ranked_tok.backend.encode(text, add_special_tokens=False).ids
    every = "".join(encoder._separators)
    assert [i.tolist() for i in encoder.encode_batch([every, "y"])] == [
        ranked_tok.backend.encode(t, add_special_tokens=False).ids for t in (every, "y")]


def test_documents_with_characters_not_probed_alike_go_to_the_tokenizer(ranked_tok):
    unassigned, private = "\u0378", "\ue000"
    texts = ["plain", f"odd {unassigned} char", f"private {private}", "caf\u00e9 \u65e5\u672c"]
    encodings = encode(rendered(texts), ranked_tok)
    assert [isinstance(e, np.ndarray) for e in encodings] == [True, False, False, True]
    for text, tokens in zip(texts, tokenize(rendered(texts), ranked_tok)):
        expected = list(ranked_tok.prefix_ids) + ranked_tok.backend.encode(text, add_special_tokens=False).ids
        assert tokens.ids.tolist() == expected


def test_the_probe_finds_characters_the_engines_split_differently(ranked_tok):
    ranked = ranked_tok.ranked
    # a regex that no longer counts Greek letters as letters: Greek words split differently
    skewed = _ranked_encoder({**ranked, "pattern": ranked["pattern"].replace(r"\p{L}", r"[\p{L}--\p{Greek}]")},
                             ranked_tok.token_bytes)
    found = _probe_disagreements(ranked_tok.backend, skewed, ["\u03b1", "\u00e9", "\u65e5", "\u03a9"])
    assert found == ["\u03b1", "\u03a9"]
    assert _probe_disagreements(ranked_tok.backend, ranked_tok.ranked_encoder, ["\u03b1", "\u00e9"]) == []


def test_pickled_for_a_worker_it_travels_without_the_parsed_tokenizer_or_the_encoder(ranked_tok):
    ranked_tok.ranked_encoder  # built here
    copy_ = pickle.loads(pickle.dumps(ranked_tok))
    assert isinstance(copy_.backend_or_json, bytes) and "ranked_encoder" not in copy_.__dict__
    texts = TRICKY
    assert [t.ids.tolist() for t in tokenize(rendered(texts), copy_)] == [
        t.ids.tolist() for t in tokenize(rendered(texts), ranked_tok)]
    assert isinstance(copy_.backend_or_json, bytes), "tiktoken encoded them all: the tokenizer was never parsed"


@requires_shared
def test_llama3_ids_from_tiktoken_equal_the_tokenizers_on_the_shared_conversations(tmp_path):
    from bench import make_corpus
    from sftdata.config import BuildConfig
    from sftdata.sources import read_inputs
    from sftdata.worker import Worker

    tok = load_tokenizer(shared_tokenizer("llama3_1"))
    assert tok.ranked is not None, "Llama 3's tokenizer.json was converted from tiktoken's ranks"
    worker = Worker(BuildConfig(tokenizer=shared_tokenizer("llama3_1")), tok)
    records = list(read_inputs(make_corpus(tmp_path, 7000)))  # every shared conversation, once
    texts = [r.text for r in worker.prepare(records).rendered] + SPELLING_TEXTS + TRICKY
    ours = encode(rendered(texts), tok)
    assert sum(isinstance(e, np.ndarray) for e in ours) == len(texts), "all of them go to tiktoken"
    theirs = tok.backend.encode_batch_fast(texts, add_special_tokens=False)
    assert [a.tolist() for a in ours] == [b.ids for b in theirs]


def test_a_process_builds_tiktokens_tables_once_for_the_tokenizer_it_builds_with(ranked_tok):
    """Loaded again (a second build in one process), the same tokenizer finds the encoder built for it;
    another tokenizer (another fingerprint) gets its own, and the first is then built afresh."""
    first = load_tokenizer(ranked_tok.name).ranked_encoder
    again = load_tokenizer(ranked_tok.name)
    assert again.ranked_encoder is first
    other = load_tokenizer(ranked_tok.name)
    other.__dict__["fingerprint"] = "another tokenizer's"  # what the cache of encoders is keyed by
    assert other.ranked_encoder is not None and other.ranked_encoder is not first
    assert load_tokenizer(ranked_tok.name).ranked_encoder is not first
    text = "<|begin_of_text|>hello"
    assert (load_tokenizer(ranked_tok.name).ranked_encoder.encode(text).tolist()
            == ranked_tok.backend.encode(text, add_special_tokens=False).ids)


def test_a_cache_entry_keeps_the_tokenizers_json_as_bytes_until_it_is_needed(ranked_tok):
    loaded = load_tokenizer(ranked_tok.name)  # from the cache entry the fixture's load wrote
    assert isinstance(loaded.backend_or_json, bytes)
    assert loaded.fingerprint == ranked_tok.fingerprint == tokenizer_fingerprint(loaded.backend)
    assert loaded.backend.to_str() == ranked_tok.backend.to_str()
