"""What one batch of a build does: raw records in, verified documents and rejects out.

A `Worker` holds what one process needs (tokenizer, compiled template, probed template facts) and turns
a batch of raw records into documents: parse -> render and find spans -> one batch encode -> mask,
verify, fit to length. It does no I/O, so it runs the same wherever an executor (executors/) runs it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .comparators import response_template_mask
from .config import BuildConfig, Masker
from .encoding import encode, piece_cuts, tokens_of
from .formats import to_conversation
from .masking import make_document
from .probe import probe_template
from .records import Conversation, Document, Message, RawRecord, Rendered
from .rejects import RecordError, Reject
from .shards import RowColumns, document_rows
from .sources import as_parsed
from .turns import render_documents
from .template import ChatTemplate
from .timing import StageSeconds
from .tokenizer import ModelTokenizer, load_tokenizer
from .truncation import fit_length


@dataclass
class BatchResult:
    documents: list[Document] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    records: int = 0
    span_methods: Counter = field(default_factory=Counter)  # how each written record's spans were found
    unrendered_fields: Counter = field(default_factory=Counter)  # documents with a field the template drops
    truncated: int = 0  # documents cut to max_length
    split_pieces: int = 0  # documents beyond the first of records split into pieces
    context_documents: int = 0  # documents beyond the first of a record, for turns trained in their context
    context_tokens: int = 0  # the tokens of those documents
    comparator_template_not_found: int = 0
    seconds: StageSeconds = field(default_factory=StageSeconds)
    # the documents as columns instead (documents then empty): how a result travels between processes,
    # a few buffers to pickle where each document is an object of its own
    columns: RowColumns | None = None

    def document_columns(self) -> RowColumns:
        """The documents, one row each."""
        return self.columns if self.columns is not None else document_rows(self.documents)

    def for_transport(self) -> BatchResult:
        return replace(self, documents=[], columns=self.document_columns())


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
            ids = self.tokenizer.backend.encode(config.response_template, add_special_tokens=False).ids
            self.response_template_ids = np.asarray(ids, dtype=np.int32)

    @cached_property
    def piece_cuts(self):
        """Where a record's documents may share the encoding of what they have in common (encoding.py);
        asked only once a batch holds a record with several documents."""
        return piece_cuts(self.tokenizer)

    def conversation(self, record: RawRecord) -> Conversation:
        data = as_parsed(record.data)
        if isinstance(data, RecordError):
            raise data
        conv = to_conversation(data, record.source_id, record.format)
        prompt = self.config.system_prompt
        if prompt and conv.messages[0].role not in ("system", "developer"):
            conv = replace(conv, messages=(Message("system", prompt),) + conv.messages)
        return conv

    def documents(self, record: RawRecord) -> list[Rendered]:
        """The record's documents as rendered: one, or more where turns are trained in their own context."""
        return render_documents(self.conversation(record), self.template, self.facts, self.config,
                                self.tokenizer.special_pattern)

    def render(self, record: RawRecord) -> Rendered:
        """The record's first document: the rendering of the whole conversation."""
        return self.documents(record)[0]

    def _mask(self, rendered: Rendered, tokens, result: BatchResult) -> Document:
        if self.config.masker is Masker.SPANS:
            return make_document(rendered, tokens, self.tokenizer, self.config.train_eot)
        # comparator: what the classic collator would train, written as is (unverified, possibly empty)
        mask = response_template_mask(tokens.ids, self.response_template_ids)
        result.comparator_template_not_found += not mask.any()
        return Document(rendered.source_id, tokens.ids, mask)

    def prepare(self, batch: list[RawRecord]) -> Prepared:
        """Parse and render (Python work)."""
        prepared = Prepared(BatchResult(records=len(batch)), [])
        with prepared.result.seconds.timing("render"):
            for record in batch:
                try:
                    prepared.rendered.extend(self.documents(record))
                except RecordError as err:
                    prepared.result.rejects.append(Reject(record.source_id, err.reason, err.detail))
        return prepared

    def encode(self, prepared: Prepared) -> Prepared:
        """One batch encode (the tokenizer's own threads; the GIL is released meanwhile)."""
        with prepared.result.seconds.timing("tokenize"):
            several = any(r.extra for r in prepared.rendered)
            prepared.encodings = encode(prepared.rendered, self.tokenizer, self.piece_cuts if several else None)
        return prepared

    def finish(self, prepared: Prepared) -> BatchResult:
        """Token offsets, then mask, verify, fit to length (Python work)."""
        cfg, result = self.config, prepared.result
        with result.seconds.timing("offsets"):
            tokens = tokens_of(prepared.rendered, prepared.encodings, self.tokenizer)
        with result.seconds.timing("mask_verify"):
            pairs = list(zip(prepared.rendered, tokens))
            # a record's documents are consecutive: it is written whole or rejected whole
            for source_id, group in itertools.groupby(pairs, key=lambda pair: pair[0].source_id):
                record = list(group)
                try:
                    written = [(r, fit_length(self._mask(r, t, result), cfg.max_length, cfg.overlong))
                               for r, t in record]
                except RecordError as err:
                    result.rejects.append(Reject(source_id, err.reason, err.detail))
                    continue
                for r, fitted in written:
                    result.documents.extend(fitted)
                    result.span_methods[r.method] += 1
                    result.unrendered_fields.update(kind for _, kind in r.unrendered)
                    result.truncated += fitted[0].truncated
                    result.split_pieces += len(fitted) - 1
                    if r.extra:
                        result.context_documents += len(fitted)
                        result.context_tokens += sum(d.num_tokens for d in fitted)
            result.rejects.sort(key=lambda r: r.source_id)
        return result

    def process(self, batch: list[RawRecord]) -> BatchResult:
        return self.finish(self.encode(self.prepare(batch)))
