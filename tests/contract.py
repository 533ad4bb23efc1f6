"""An independent check of the masking contract, used by the tests.

It knows nothing of how sftdata finds spans: it renders with transformers' own `apply_chat_template`,
tokenizes with transformers, and reads the trained token runs back as text through the tokenizer's
offsets. A document passes when:
  1. its ids equal that tokenization (the tokenizer's BOS rule applied once);
  2. every trained assistant message's content appears inside a trained run, and every untrained
     message's content appears outside the trained runs at least once per untrained occurrence;
  3. each trained run ends with the end-of-turn token, and contains no other control token than those
     the model itself generates (`allowed`);
  4. the first token is not trained.
"""

from __future__ import annotations

import json

import jinja2
import numpy as np
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from sftdata.spans import template_messages

_TOKENIZERS: dict = {}


def hf_tokenizer(path: str):
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def reference_tokens(path: str, template: str, conversation) -> tuple[str, list[int], list[tuple[int, int]]]:
    tok = hf_tokenizer(path)
    kwargs = {"tools": list(conversation.tools)} if conversation.tools else {}
    text = tok.apply_chat_template(template_messages(conversation.messages), chat_template=template,
                                   tokenize=False, **kwargs)
    return text, *tokenized(path, text)


def trained_runs(text: str, mask: np.ndarray, offsets) -> list[str]:
    runs, start = [], None
    for t, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append(text[offsets[start][0] : offsets[t - 1][1]])
            start = None
    return runs


def check_contract(path: str, template: str, conversation, doc, trained: list[bool], end_of_turn: str | None,
                   specials: set[str], allowed: frozenset = frozenset()) -> None:
    text, ids, offsets = reference_tokens(path, template, conversation)
    assert doc.input_ids.tolist() == ids, "input_ids differ from one tokenization of the rendered text"
    assert doc.loss_mask[0] == 0, "the first token is a target"
    runs = trained_runs(text, doc.loss_mask, offsets)
    inside = "\x00".join(runs)
    for message, train in zip(conversation.messages, trained):
        core = message.content.strip()
        if not core:
            continue
        if train:
            assert any(core in run for run in runs), f"trained {message.role} content not in a trained run: {core!r:.60}"
        else:
            untrained_occurrences = sum(1 for m, t in zip(conversation.messages, trained)
                                        if not t and m.content.strip() == core)
            if not text.count(core):
                continue  # rendered transformed (a template that JSON-escapes tool results): not checkable here
            assert text.count(core) - inside.count(core) >= untrained_occurrences, \
                f"untrained {message.role} content is trained: {core!r:.60}"
    for run in runs:
        if end_of_turn:
            assert run.endswith(end_of_turn), f"trained run does not end with {end_of_turn!r}: {run[-40:]!r}"
        body = run[: -len(end_of_turn)] if end_of_turn else run
        stray = [s for s in specials - allowed if s in body]
        assert not stray, f"control tokens {stray} inside a trained run: {run[:80]!r}"


def _jinja_render(path: str, template: str, messages: list[dict], tools, generation: bool, **mode) -> str:
    """A plain sandboxed Jinja rendering set up as transformers sets one up, for records transformers
    changes before rendering (this version gives a template `content: null` as an empty string)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    tok = hf_tokenizer(path)
    specials = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tok, k)}
    return env.from_string(template).render(messages=messages, tools=tools, add_generation_prompt=generation,
                                            **specials, **mode)


def render_prefix(path: str, template: str, conversation, k: int, generation: bool = False, raw: bool = False,
                  **mode) -> str:
    """transformers' rendering of the conversation's first k messages (with the generation prompt); with
    `raw`, a plain Jinja one that passes the messages as they are."""
    messages = template_messages(conversation.messages)[:k]
    tools = list(conversation.tools) if conversation.tools else None
    if raw:
        return _jinja_render(path, template, messages, tools, generation, **mode)
    kwargs = {"tools": tools} if tools else {}
    return hf_tokenizer(path).apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=generation, **kwargs, **mode)


def tokenized(path: str, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """transformers' tokenization of a rendering, the tokenizer's BOS rule applied unless the text has it."""
    tok = hf_tokenizer(path)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    with_bos = tok("a")["input_ids"]
    prefix = with_bos[: len(with_bos) - len(tok("a", add_special_tokens=False)["input_ids"])]
    if prefix and ids[: len(prefix)] != prefix:
        ids, offsets = prefix + ids, [(0, 0)] * len(prefix) + offsets
    return ids, offsets


def check_generation_contract(path: str, template: str, conversation, documents, trained: list[bool],
                              specials: set[str], modes: tuple[dict, ...] = ({},), raw: bool = False,
                              appended: str = "") -> dict[int, list[str]]:
    """The contract of issue 14, judged from transformers' renderings alone:
      - every document is one tokenization of the rendering of a prefix of the conversation;
      - each trained turn i is trained in exactly one document, which holds the rendering of the
        conversation through turn i (turn i last) up to the control token closing it: trained from the end
        of the longest prompt of any mode that rendering continues (the conversation before turn i with
        the generation prompt) through that control token, every token of it;
      - no other token of any document is trained, and no document's first token.
    `raw`: render with plain Jinja instead of transformers (records with `content: null`); `appended`: what
    the template writes after every conversation (Meta Llama 3 Instruct's assistant header).
    Returns each document's trained text runs."""
    n = len(conversation.messages)
    renderings = {}
    for k in range(1, n + 1):
        try:
            renderings[k] = render_prefix(path, template, conversation, k, raw=raw)
        except jinja2.TemplateError:  # a prefix the template refuses (tools listed with no user message yet)
            continue
    texts, offsets = [], []
    for doc in documents:
        ids = doc.input_ids.tolist()
        k = next((k for k in sorted(renderings, reverse=True) if tokenized(path, renderings[k])[0] == ids), None)
        assert k is not None, "a document is not one tokenization of the rendering of a prefix of the conversation"
        assert doc.loss_mask[0] == 0, "the first token is a target"
        texts.append(renderings[k])
        offsets.append(tokenized(path, renderings[k])[1])
    allowed = [np.zeros(len(doc.input_ids), dtype=bool) for doc in documents]
    for i, train in enumerate(trained):
        if not train:
            continue
        last = renderings[i + 1]
        prompts = [render_prefix(path, template, conversation, i, True, raw, **mode) for mode in modes]
        start = max(len(p) for p in prompts if last.startswith(p))
        end = len(last.removesuffix(appended).rstrip()) if appended else len(last.rstrip())
        assert any(last[:end].endswith(s) for s in specials), f"turn {i} as the last turn ends in no control token"
        hosts = []
        for d, (doc, text, offs) in enumerate(zip(documents, texts, offsets)):
            touching = [t for t, (a, b) in enumerate(offs) if a < end and b > start and b > a]
            if not text.startswith(last[:end]) or not any(doc.loss_mask[t] for t in touching):
                continue
            assert all(doc.loss_mask[t] for t in touching), f"turn {i}: a token of it is not trained"
            allowed[d][touching] = True
            hosts.append(d)
        assert len(hosts) == 1, f"turn {i} is trained in {len(hosts)} documents, not exactly one"
    for d, doc in enumerate(documents):
        stray = np.flatnonzero(doc.loss_mask.astype(bool) & ~allowed[d])
        assert not len(stray), f"document {d}: token {stray[0]} is trained outside every trained turn"
    return {d: trained_runs(text, doc.loss_mask, offs) for d, (doc, text, offs) in
            enumerate(zip(documents, texts, offsets))}
