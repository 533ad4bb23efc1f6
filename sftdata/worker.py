"""What one batch of a build does: raw records in, verified documents and rejects out.

A `Worker` holds what one process needs (tokenizer, compiled template, probed template facts) and turns
a batch of raw records into documents: parse -> render and find spans -> one batch encode -> mask,
verify, fit to length. It does no I/O, so it runs the same wherever an executor (executors/) runs it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from .comparators import response_template_mask
from .config import BuildConfig, Masker
from .encoding import encode, tokens_of
from .formats import to_conversation
from .masking import make_document
from .probe import probe_template
from .records import Conversation, Document, Message, RawRecord, Rendered
from .rejects import RecordError, Reject
from .spans import render_conversation
from .template import ChatTemplate
from .tokenizer import ModelTokenizer, load_tokenizer
from .truncation import fit_length


@dataclass
class BatchResult:
    documents: list[Document] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    records: int = 0
    counters: Counter = field(default_factory=Counter)  # span methods, untrained empty turns, ...
    seconds: Counter = field(default_factory=Counter)  # time per stage


@dataclass
class Prepared:
    """A batch between stages: rendered, then encoded."""

    result: BatchResult
    rendered: list[Rendered]
    encodings: list | None = None


class Worker:
    def __init__(self, config: BuildConfig, tokenizer: ModelTokenizer | None = None):
        self.config = config
        # worker processes get the loaded tokenizer (it pickles as its JSON) instead of loading it again
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer, config.chat_template)
        self.template = ChatTemplate(self.tokenizer.chat_template, self.tokenizer.special_tokens_map,
                                     config.template_date)
        self.facts = probe_template(self.template, self.tokenizer.special_pattern)
        # whether tiktoken may encode is decided once, here (cached with the tokenizer): pool workers get
        # the verdict with the tokenizer instead of each comparing the two libraries again
        self.tokenizer.ranked
        if config.masker is Masker.RESPONSE_TEMPLATE:
            if not config.response_template:
                raise ValueError("--masker response-template needs --response-template TEXT")
            ids = self.tokenizer.backend.encode(config.response_template, add_special_tokens=False).ids
            self.response_template_ids = np.asarray(ids, dtype=np.int32)

    def conversation(self, record: RawRecord) -> Conversation:
        if isinstance(record.data, RecordError):
            raise record.data
        conv = to_conversation(record.data, record.source_id, record.format)
        prompt = self.config.system_prompt
        if prompt and conv.messages[0].role != "system":
            conv = replace(conv, messages=(Message("system", prompt),) + conv.messages)
        return conv

    def render(self, record: RawRecord) -> Rendered:
        cfg = self.config
        return render_conversation(self.conversation(record), self.template, self.facts, cfg.train_on,
                                   cfg.train_eot, cfg.special_text, self.tokenizer.special_pattern)

    def _mask(self, rendered: Rendered, tokens, result: BatchResult) -> Document:
        if self.config.masker is Masker.SPANS:
            return make_document(rendered, tokens, self.tokenizer, self.config.train_eot)
        # comparator: what the classic collator would train, written as is (unverified, possibly empty)
        mask = response_template_mask(tokens.ids, self.response_template_ids)
        result.counters["comparator_template_not_found"] += not mask.any()
        return Document(rendered.source_id, tokens.ids, mask)

    def prepare(self, batch: list[RawRecord]) -> Prepared:
        """Parse and render (Python work)."""
        started = time.perf_counter()
        prepared = Prepared(BatchResult(records=len(batch)), [])
        for record in batch:
            try:
                prepared.rendered.append(self.render(record))
            except RecordError as err:
                prepared.result.rejects.append(Reject(record.source_id, err.reason, err.detail))
        prepared.result.seconds["render"] += time.perf_counter() - started
        return prepared

    def encode(self, prepared: Prepared) -> Prepared:
        """One batch encode (the tokenizer's own threads; the GIL is released meanwhile)."""
        started = time.perf_counter()
        prepared.encodings = encode(prepared.rendered, self.tokenizer)
        prepared.result.seconds["tokenize"] += time.perf_counter() - started
        return prepared

    def finish(self, prepared: Prepared) -> BatchResult:
        """Token offsets, then mask, verify, fit to length (Python work)."""
        started = time.perf_counter()
        cfg, result = self.config, prepared.result
        tokens = tokens_of(prepared.rendered, prepared.encodings, self.tokenizer)
        result.seconds["offsets"] += time.perf_counter() - started
        started = time.perf_counter()
        for r, t in zip(prepared.rendered, tokens):
            try:
                doc = self._mask(r, t, result)
                fitted = fit_length(doc, cfg.max_length, cfg.overlong)
            except RecordError as err:
                result.rejects.append(Reject(r.source_id, err.reason, err.detail))
                continue
            result.documents.extend(fitted)
            result.counters[f"span_method_{r.method}"] += 1
            result.counters.update(f"documents_with_unrendered_{kind}" for kind in r.unrendered)
            result.counters["truncated"] += fitted[0].truncated
            result.counters["split_pieces"] += len(fitted) - 1
        result.rejects.sort(key=lambda r: r.source_id)
        result.seconds["mask_verify"] += time.perf_counter() - started
        return result

    def process(self, batch: list[RawRecord]) -> BatchResult:
        return self.finish(self.encode(self.prepare(batch)))
