"""`sftdata build`: inputs -> verified documents -> Arrow shards, rejects.jsonl and manifest.json.

The orchestration only, in the phases of units.py, which an executor runs (executors/: this machine, or
a Ray cluster): plan the units of input, map each to documents and rejects, plan the rows from the
documents' lengths, write the shards; then the rejects and last the manifest, so a directory with one is
a finished build. Reading is sources.py, the per-batch work worker.py, storage shards.py and storage.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import __version__
from .config import BuildConfig, Executor, SpecialText
from .executors.local import LocalExecutor, default_workers
from .manifest import (
    EVAL_DIR,
    REJECTS,
    Counts,
    InputInfo,
    Manifest,
    PackingInfo,
    ShardInfo,
    SplitInfo,
    TemplateInfo,
)
from .out_dir import Claim
from .out_dir import claim as out_dir_claim
from .packing import fill_stats
from .sources import FilePlan, Unit, units_of
from .special_text import special_text_error
from .split import held_out
from .storage import Folder, public
from .timing import StageSeconds
from .tokenizer import ModelTokenizer
from .units import (
    UNITS,
    UnitCounts,
    UnitJob,
    UnitOutcome,
    WriteJob,
    build_key,
    completed,
    concatenated,
    plan_rows,
    plan_shards,
    rejects_name,
)
from .worker import Worker


class BuildError(Exception):
    """The build cannot start or finish: the message says what to fix."""


@dataclass
class Progress:
    records: int = 0
    records_written: int = 0
    documents: int = 0  # more than records_written when split-turns splits long records
    tokens: int = 0
    trained_tokens: int = 0
    rejected: int = 0
    units_reused: int = 0  # units a resumed build took from the run it resumes
    started: float = field(default_factory=time.perf_counter)
    phase: str = ""  # what the build does besides mapping batches, which it reports as they finish


class _Tally:
    """Everything a build counts: progress as batches finish, and per input and in total what the
    finished units hold."""

    def __init__(self, inputs: int):
        self.progress = Progress()
        self.total = UnitCounts()
        self.per_input = [UnitCounts() for _ in range(inputs)]
        self.seconds = StageSeconds()  # the driver's phases; the workers' stages are in total.seconds

    def progressed(self, counts: UnitCounts) -> None:
        p = self.progress
        p.records += counts.records
        p.records_written += counts.records_written
        p.documents += counts.documents
        p.tokens += counts.tokens
        p.trained_tokens += counts.trained_tokens
        p.rejected += counts.rejected

    def add(self, outcome: UnitOutcome) -> None:
        """A finished unit."""
        self.total.add(outcome.record.counts)
        self.per_input[outcome.record.unit.input_index].add(outcome.record.counts)

    def inputs(self, paths: list[str], plans: list[FilePlan]) -> list[InputInfo]:
        return [InputInfo(path=public(p), format=plan.format, records=c.records, records_written=c.records_written,
                          documents=c.documents, rejected=c.rejected)
                for p, plan, c in zip(paths, plans, self.per_input)]

    def counts(self, rows: int) -> Counts:
        t = self.total
        if t.records != t.records_written + t.rejected:
            raise BuildError(f"internal error: {t.records} records != {t.records_written} written "
                             f"+ {t.rejected} rejected")
        return Counts(records=t.records, records_written=t.records_written, documents=t.documents,
                      rejected=t.rejected, rejected_by_reason=dict(sorted(t.reasons.items())),
                      tokens=t.tokens, trained_tokens=t.trained_tokens, truncated=t.truncated,
                      split_pieces=t.split_pieces, rows=rows, span_methods=dict(sorted(t.span_methods.items())),
                      unrendered_fields=dict(sorted(t.unrendered_fields.items())),
                      comparator_template_not_found=t.comparator_template_not_found,
                      context_documents=t.context_documents, context_tokens=t.context_tokens)


def _executor(config: BuildConfig, local: Worker):
    if config.executor is Executor.RAY:
        from .executors.ray import RayExecutor  # an optional extra: a local build never imports Ray

        return RayExecutor(config, local)
    return LocalExecutor(config, local, config.workers or default_workers())


def build(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BuildConfig,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    resume: bool = False,
    loaded_tokenizer: ModelTokenizer | None = None,
) -> Manifest:
    """Build `inputs` (local paths or URLs) into `out_dir` (a local path or a URL). With `resume`, the
    units a killed run of the same build finished are taken as they are (once their checksums match).
    `loaded_tokenizer`: `load_tokenizer(config.tokenizer, config.chat_template)`, where the caller holds
    it already."""
    paths = [str(p) for p in inputs]
    if not paths:
        raise BuildError("no inputs given")
    if loaded_tokenizer is not None and loaded_tokenizer.name != config.tokenizer:
        raise ValueError(f"the loaded tokenizer {loaded_tokenizer.name!r} is not the build's, {config.tokenizer!r}")
    # loads tokenizer and template: a problem with either stops the build here
    local = Worker(config, loaded_tokenizer)
    if config.special_text is SpecialText.REJECT and config.system_prompt:
        why = special_text_error(config.system_prompt, local.tokenizer.special_pattern)
        if why:  # a setting, not a record: refused once instead of rejecting every record
            raise BuildError(f"--system-prompt {why}")
    with out_dir_claim(str(out_dir), paths, overwrite, resume) as claim:
        return _build(paths, claim, config, local, on_progress, resume)


def _build(paths: list[str], claim: Claim, config: BuildConfig, local: Worker,
           on_progress: Callable[[Progress], None] | None, resume: bool) -> Manifest:
    out = claim.folder
    tally = _Tally(len(paths))

    def progressed(counts: UnitCounts) -> None:
        tally.progressed(counts)
        if on_progress:
            on_progress(tally.progress)

    def entered(phase: str) -> None:
        tally.progress.phase = phase
        if on_progress:
            on_progress(tally.progress)

    with contextlib.closing(_executor(config, local)) as executor:
        entered("reading where the inputs' records are")
        with tally.seconds.timing("plan"):
            plans = executor.plan(paths, config.format, config.unit_records)
        units = units_of(paths, plans)
        job = UnitJob(out.url(UNITS), build_key(config, local.tokenizer.fingerprint,
                                                local.tokenizer.template_fingerprint), claim.token)
        entered("checking the units a killed run finished" if resume else "")
        outcomes = _map(units, job, executor, tally, progressed, resume)
        entered("writing shards")
        documents = _Documents.of(outcomes)
        held = (held_out(documents.source_ids, config.eval_fraction, config.eval_records, config.seed)
                if config.holds_out else np.zeros(len(documents.lengths), dtype=bool))
        shards, packing = _write_split(executor, config, out.path, job, outcomes, documents, ~held, tally)
        eval_split = None
        if config.holds_out:
            eval_shards, eval_packing = _write_split(executor, config, out.url(EVAL_DIR), job, outcomes, documents,
                                                     held, tally)
            eval_split = SplitInfo(records=len(np.unique(documents.source_ids[held])), documents=int(held.sum()),
                                   tokens=int(documents.lengths[held].sum()),
                                   trained_tokens=int(documents.trained[held].sum()),
                                   rows=sum(s.rows for s in eval_shards), shards=eval_shards, packing=eval_packing)
    _merge_rejects(out, units)

    template = local.template
    manifest = Manifest(
        sftdata_version=__version__,
        tokenizer=local.tokenizer.summary(),
        template=TemplateInfo(
            source=local.tokenizer.template_source, fingerprint=local.tokenizer.template_fingerprint,
            header=local.facts.header, end_of_turn=local.facts.end_of_turn,
            # once per conversation where it provably passes message text through, else twice (spans.py)
            renders=2 if template.passthrough_refusal else 1, why_two_renders=template.passthrough_refusal),
        config=config,
        inputs=tally.inputs(paths, plans),
        counts=tally.counts(rows=sum(s.rows for s in shards) + (eval_split.rows if eval_split else 0)),
        packing=packing,
        shards=shards,
        eval=eval_split,
        seconds={**tally.total.seconds, **tally.seconds},
    )
    claim.confirm()
    manifest.write(out)
    out.remove(UNITS)
    return manifest


def _map(units: list[Unit], job: UnitJob, executor, tally: _Tally, progressed: Callable[[UnitCounts], None],
         resume: bool) -> list[UnitOutcome]:
    """Every unit's outcome, in unit order: taken from a killed run's where it finished them (resume),
    made by the executor otherwise."""
    outcomes: list[UnitOutcome | None] = [completed(job, u) if resume else None for u in units]
    tally.progress.units_reused = sum(o is not None for o in outcomes)
    for outcome in outcomes:
        if outcome is not None:
            tally.add(outcome)
            progressed(outcome.record.counts)
    with tally.seconds.timing("map"):
        for outcome in executor.map([u for u, o in zip(units, outcomes) if o is None], job, progressed):
            outcomes[outcome.record.unit.index] = outcome
            tally.add(outcome)
    return outcomes


class _Documents(NamedTuple):
    """Every document of the build, in input order: what the units sent back."""

    lengths: np.ndarray
    source_ids: np.ndarray
    trained: np.ndarray

    @classmethod
    def of(cls, outcomes: list[UnitOutcome]) -> _Documents:
        return cls(*(concatenated([getattr(o, column) for o in outcomes], dtype)
                     for column, dtype in (("lengths", np.int32), ("source_ids", np.int64), ("trained", np.int32))))


def _write_split(executor, config: BuildConfig, out_dir: str, job: UnitJob, outcomes: list[UnitOutcome],
                 documents: _Documents, chosen: np.ndarray, tally: _Tally) -> tuple[list[ShardInfo], PackingInfo | None]:
    """The shards of one split (the chosen documents, in input order): rows planned from their lengths,
    then written by the executor."""
    with tally.seconds.timing("plan_rows"):
        picked = np.flatnonzero(chosen)
        lengths = documents.lengths[picked]
        order, offsets = plan_rows(lengths, config.max_length, config.seed, config.pack)
        tasks = [task._replace(documents=picked[task.documents])
                 for task in plan_shards(lengths, order, offsets, config.shard_tokens)]
    with tally.seconds.timing("write"):
        shards = executor.write(tasks, _write_job(job, out_dir, outcomes))
    rows = np.split(order, offsets[1:-1]) if len(offsets) > 1 else []  # no document: no row
    packing = fill_stats(lengths, rows, config.max_length) if config.pack else None
    return shards, packing


def _write_job(job: UnitJob, out_dir: str, outcomes: list[UnitOutcome]) -> WriteJob:
    with_documents = [o for o in outcomes if len(o.lengths)]
    starts = np.zeros(len(with_documents) + 1, dtype=np.int64)
    np.cumsum([len(o.lengths) for o in with_documents], out=starts[1:])
    return WriteJob(job.units_dir, out_dir, starts,
                    np.asarray([o.record.unit.index for o in with_documents], dtype=np.int64), job.token)


def _merge_rejects(out: Folder, units: list[Unit]) -> None:
    """rejects.jsonl: the units' rejects, in unit order (so in source id order), written whole."""
    units_dir = Folder(out.url(UNITS), out.token)
    writer = out.create(REJECTS)
    for unit in units:
        writer.write(units_dir.read_bytes(rejects_name(unit.index)))
    writer.publish()
