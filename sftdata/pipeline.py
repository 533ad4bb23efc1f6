"""The build's per-batch work: raw records in, verified documents and rejects out.

A `Worker` holds what one process needs (tokenizer, compiled template, probed template facts) and turns
a batch of raw records into documents: parse -> render and find spans -> one batch encode -> mask,
verify, fit to length. It does no I/O, so it runs the same in-process or in a pool (executor.py).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from .comparators import response_template_mask
from .config import BuildConfig, Masker
from .conversation import Conversation, Document, Message
from .formats import to_conversation
from .masking import make_document
from .tokens import tokenize
from .rejects import Reject, RecordError
from .sources import RawRecord
from .spans import Rendered, probe_template, render_conversation
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


class Worker:
    def __init__(self, config: BuildConfig, tokenizer: ModelTokenizer | None = None):
        self.config = config
        # worker processes get the loaded tokenizer (it pickles as its JSON) instead of loading it again
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer, config.chat_template)
        self.template = ChatTemplate(self.tokenizer.chat_template, self.tokenizer.special_tokens_map,
                                     config.template_date)
        self.facts = probe_template(self.template, self.tokenizer.special_pattern)
        if config.masker is Masker.RESPONSE_TEMPLATE:
            if not config.response_template:
                raise ValueError("--masker response-template needs --response-template TEXT")
            ids = self.tokenizer.backend.encode(config.response_template, add_special_tokens=False).ids
            self.response_template_ids = np.asarray(ids, dtype=np.int32)

    def _conversation(self, record: RawRecord) -> Conversation:
        if isinstance(record.data, RecordError):
            raise record.data
        conv = to_conversation(record.data, record.source_id, record.format)
        prompt = self.config.system_prompt
        if prompt and conv.messages[0].role != "system":
            conv = replace(conv, messages=(Message("system", prompt),) + conv.messages)
        return conv

    def render(self, record: RawRecord) -> Rendered:
        cfg = self.config
        return render_conversation(self._conversation(record), self.template, self.facts, cfg.train_on,
                                   cfg.train_eot, cfg.special_text, self.tokenizer.special_pattern)

    def _mask(self, rendered: Rendered, tokens, result: BatchResult) -> Document:
        if self.config.masker is Masker.SPANS:
            return make_document(rendered, tokens, self.tokenizer, self.config.train_eot)
        # comparator: what the classic collator would train, written as is (unverified, possibly empty)
        mask = response_template_mask(tokens.ids, self.response_template_ids)
        result.counters["comparator_template_not_found"] += not mask.any()
        return Document(rendered.source_id, tokens.ids, mask)

    def process(self, batch: list[RawRecord]) -> BatchResult:
        result = BatchResult(records=len(batch))
        cfg = self.config
        t0 = time.perf_counter()
        rendered: list[Rendered] = []
        for record in batch:
            try:
                rendered.append(self.render(record))
            except RecordError as err:
                result.rejects.append(Reject(record.source_id, err.reason, err.detail))
        t1 = time.perf_counter()
        tokens = tokenize(rendered, self.tokenizer)
        t2 = time.perf_counter()
        for r, t in zip(rendered, tokens):
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
        t3 = time.perf_counter()
        result.seconds.update({"render": t1 - t0, "tokenize": t2 - t1, "mask_verify": t3 - t2})
        result.rejects.sort(key=lambda r: r.source_id)
        return result
