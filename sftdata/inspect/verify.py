"""`sftdata verify OUT`: re-check a finished build before it is trained on (a data CI gate).

Everything that can be checked from the build's own files, without the inputs or the tokenizer:
  - files: every shard the manifest lists is there with its size and SHA-256, rows and tokens; no shard
    it does not list;
  - every row and document: columns of one length, `seq_lens` summing to the row, every document's first
    token untrained (no target reaches across a document boundary), mask values 0/1, ids inside the
    vocabulary, no document starting with the BOS twice, source ids among the build's records, lengths
    within --max-length;
  - counts: documents, rows, tokens, trained tokens and records written against `counts`, `inputs`,
    `packing` and the eval split's `eval` (no record in both splits); `rejects.jsonl` against the rejected counts and reasons; no record both written and
    rejected; `records == records_written + rejected`, per input and in total.
Exit status 0 when every check passes, 1 naming each that failed, 2 when OUT is not a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..manifest import EVAL_DIR, REJECTS, Manifest, ManifestError, PackingInfo, ShardInfo
from ..shards import Columns, open_shard, shard_columns
from ..storage import Folder

SHOWN_PER_CHECK = 3  # examples printed for each failed check


@dataclass
class Findings:
    """Failed checks by name, with up to SHOWN_PER_CHECK examples and a count each."""

    failed: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def fail(self, check: str, example: str, count: int = 1) -> None:
        examples = self.failed.setdefault(check, [])
        if len(examples) < SHOWN_PER_CHECK:
            examples.append(example)
        self.counts[check] += count

    def expect(self, check: str, found, expected) -> None:
        if found != expected:
            self.fail(check, f"found {found!r}, the manifest says {expected!r}")

    def lines(self) -> list[str]:
        return [f"{check} ({self.counts[check]:,}): " + "; ".join(examples) for check, examples in self.failed.items()]


@dataclass
class Totals:
    """What the shards hold, summed while reading them."""

    rows: int = 0
    documents: int = 0
    tokens: int = 0
    trained: int = 0
    source_ids: list = field(default_factory=list)


def _check_rows(columns: Columns, where: str, manifest: Manifest, found: Findings) -> tuple[int, int, np.ndarray]:
    """The row and document checks on one record batch; returns (tokens, trained tokens, source ids)."""
    (ids_at, mask_at, lens_at, src_at), (ids, mask, lens, sources) = columns.offsets, columns.values
    ids_at, lens_at, src_at = ids_at.astype(np.int64), lens_at.astype(np.int64), src_at.astype(np.int64)
    ids, mask = ids[ids_at[0] : ids_at[-1]], mask[mask_at[0] : mask_at[-1]]
    row_tokens = np.diff(ids_at)
    if not np.array_equal(row_tokens, np.diff(mask_at.astype(np.int64))):
        found.fail("input_ids and loss_mask differ in length", where)
        return int(len(ids)), 0, np.zeros(0, np.int64)
    if not np.array_equal(np.diff(lens_at), np.diff(src_at)):
        found.fail("seq_lens and source_ids differ in length", where)
    lens, sources = lens[lens_at[0] : lens_at[-1]].astype(np.int64), sources[src_at[0] : src_at[-1]]
    summed = np.concatenate([[0], np.cumsum(lens)])
    sums = summed[lens_at[1:] - lens_at[0]] - summed[lens_at[:-1] - lens_at[0]]
    bad_rows = np.flatnonzero(sums != row_tokens)
    if len(bad_rows) or (lens < 1).any():
        found.fail("seq_lens do not sum to the row", f"{where} row {int(bad_rows[0]) if len(bad_rows) else '?'}",
                   max(len(bad_rows), 1))
    else:
        starts = summed[:-1]  # every document's first token, counted in the batch's flat tokens
        trained_starts = np.flatnonzero(mask[starts] != 0)
        if len(trained_starts):
            found.fail("a document's first token is a target", f"{where} document {int(trained_starts[0])}",
                       len(trained_starts))
        _check_documents(ids, starts, lens, manifest, where, found)
    if (mask > 1).any():
        found.fail("loss_mask values other than 0 and 1", where, int((mask > 1).sum()))
    if len(ids) and (ids.min() < 0 or ids.max() >= manifest.tokenizer.vocab_size):
        found.fail("token ids outside the vocabulary", f"{where}: ids {int(ids.min())}..{int(ids.max())}, "
                   f"vocabulary {manifest.tokenizer.vocab_size:,}")
    limit = manifest.config.max_length
    if limit is not None:
        longest = int(row_tokens.max(initial=0)) if manifest.config.pack else int(lens.max(initial=0))
        if longest > limit:
            found.fail("longer than max_length", f"{where}: {longest:,} tokens > {limit:,}")
    if len(sources) and (sources.min() < 0 or sources.max() >= manifest.counts.records):
        found.fail("source ids outside the build's records", f"{where}: {int(sources.min())}..{int(sources.max())}, "
                   f"records {manifest.counts.records:,}")
    return int(len(ids)), int(mask.sum(dtype=np.int64)), sources


def _check_documents(ids: np.ndarray, starts: np.ndarray, lens: np.ndarray, manifest: Manifest, where: str,
                     found: Findings) -> None:
    prefix = manifest.tokenizer.prefix_ids
    if not prefix:
        return
    p = len(prefix)
    long_enough = starts[lens >= 2 * p]
    twice = np.ones(len(long_enough), dtype=bool)
    for k, token in enumerate(prefix * 2):
        twice &= ids[long_enough + k] == token
    if twice.any():
        found.fail("a document starts with the BOS twice", f"{where} document at token {int(long_enough[twice][0])}",
                   int(twice.sum()))


def _check_shard(build_dir: Path, name: str, info: ShardInfo, manifest: Manifest, found: Findings,
                 totals: Totals) -> None:
    path = build_dir / name
    if not path.is_file():
        found.fail("shards missing", name)
        return
    found.expect(f"{name} size in bytes", path.stat().st_size, info.file_bytes)
    found.expect(f"{name} SHA-256", Folder(build_dir).sha256(name), info.sha256)
    try:
        table = open_shard(path)
    except (OSError, ValueError) as err:  # what pyarrow raises for a stream it cannot read
        found.fail("shards unreadable", f"{name}: {err}")
        return
    rows = tokens = 0
    for b, columns in enumerate(shard_columns(table)):
        n, trained, sources = _check_rows(columns, f"{name} batch {b}", manifest, found)
        rows, tokens = rows + columns.rows, tokens + n
        totals.trained += trained
        totals.documents += len(sources)
        totals.source_ids.append(sources)
    found.expect(f"{name} rows", rows, info.rows)
    found.expect(f"{name} tokens", tokens, info.tokens)
    totals.rows, totals.tokens = totals.rows + rows, totals.tokens + tokens


def _read_rejects(build_dir: Path, found: Findings) -> list[tuple[int, str]]:
    """(source id, reason) of every line of rejects.jsonl."""
    path = build_dir / REJECTS
    if not path.is_file():
        found.fail("rejects.jsonl missing", str(path))
        return []
    rejects = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                reject = json.loads(line)
                rejects.append((int(reject["source_id"]), str(reject["reason"])))
            except (ValueError, KeyError, TypeError) as err:
                found.fail("rejects.jsonl lines unreadable", f"line {lineno}: {err}")
    return rejects


def _check_counts(manifest: Manifest, train: Totals, held_out: Totals, rejects: list[tuple[int, str]],
                  found: Findings) -> None:
    c = manifest.counts
    sources = train.source_ids + held_out.source_ids
    written = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    distinct = np.unique(written)
    found.expect("counts.rows", train.rows + held_out.rows, c.rows)
    found.expect("counts.documents", train.documents + held_out.documents, c.documents)
    found.expect("counts.tokens", train.tokens + held_out.tokens, c.tokens)
    found.expect("counts.trained_tokens", train.trained + held_out.trained, c.trained_tokens)
    found.expect("counts.records_written", len(distinct), c.records_written)
    found.expect("counts.rejected (rejects.jsonl lines)", len(rejects), c.rejected)
    found.expect("counts.rejected_by_reason", dict(sorted(Counter(r for _, r in rejects).items())),
                 c.rejected_by_reason)
    if c.records != c.records_written + c.rejected:
        found.fail("records == records_written + rejected", f"{c.records} != {c.records_written} + {c.rejected}")
    rejected_ids = np.asarray(sorted(s for s, _ in rejects), dtype=np.int64)
    both = np.intersect1d(distinct, rejected_ids)
    if len(both):
        found.fail("records both written and rejected", f"source ids {both[:5].tolist()}", len(both))
    if manifest.inputs:
        _check_inputs(manifest, written, distinct, rejected_ids, found)
    _check_split("", manifest.packing, train, found)
    if manifest.eval is not None:
        e = manifest.eval
        held = np.concatenate(held_out.source_ids) if held_out.source_ids else np.zeros(0, np.int64)
        for name, value in (("records", len(np.unique(held))), ("documents", held_out.documents),
                            ("tokens", held_out.tokens), ("trained_tokens", held_out.trained), ("rows", held_out.rows)):
            found.expect(f"eval.{name}", value, getattr(e, name))
        _check_split("eval.", e.packing, held_out, found)
        both = np.intersect1d(np.unique(held), np.unique(np.concatenate(train.source_ids or [np.zeros(0, np.int64)])))
        if len(both):
            found.fail("records in both the train and the eval split", f"source ids {both[:5].tolist()}", len(both))


def _check_split(prefix: str, packing: PackingInfo | None, totals: Totals, found: Findings) -> None:
    if packing is not None:
        found.expect(f"{prefix}packing.rows", totals.rows, packing.rows)
        found.expect(f"{prefix}packing.documents", totals.documents, packing.documents)
        found.expect(f"{prefix}packing.tokens", totals.tokens, packing.tokens)


def _check_inputs(manifest: Manifest, written: np.ndarray, distinct: np.ndarray, rejected_ids: np.ndarray,
                  found: Findings) -> None:
    c = manifest.counts
    for name, per_input, total in (("records", [i.records for i in manifest.inputs], c.records),
                                   ("documents", [i.documents for i in manifest.inputs], c.documents),
                                   ("records_written", [i.records_written for i in manifest.inputs], c.records_written),
                                   ("rejected", [i.rejected for i in manifest.inputs], c.rejected)):
        found.expect(f"sum of inputs[].{name}", sum(per_input), total)
    for k, info in enumerate(manifest.inputs):
        where = f"inputs[{k}] ({info.path})"
        if info.records != info.records_written + info.rejected:
            found.fail("records == records_written + rejected per input",
                       f"{where}: {info.records} != {info.records_written} + {info.rejected}")
    for name, ids in (("documents", manifest.input_of(written)), ("records_written", manifest.input_of(distinct)),
                      ("rejected", manifest.input_of(rejected_ids))):
        counted = np.bincount(ids, minlength=len(manifest.inputs))[: len(manifest.inputs)].tolist()
        found.expect(f"inputs[].{name} from the shards", counted, [getattr(i, name) for i in manifest.inputs])


def verify_build(build_dir: str | Path) -> list[str]:
    """Every failed check of a finished build, one line each; empty when the build is sound."""
    build_dir, found, train, held_out = Path(build_dir), Findings(), Totals(), Totals()
    try:
        manifest = Manifest.read(build_dir, check_files=False)  # every file is checked here, in full
    except ManifestError as err:
        return [f"manifest: {err}"]
    for name, info in manifest.shard_files():
        _check_shard(build_dir, name, info, manifest, found, held_out if name.startswith(EVAL_DIR + "/") else train)
    listed = {name for name, _ in manifest.shard_files()}
    on_disk = [*build_dir.glob("shard-*.arrow"), *(build_dir / EVAL_DIR).glob("shard-*.arrow")]
    for stray in sorted(str(p.relative_to(build_dir)) for p in on_disk if str(p.relative_to(build_dir)) not in listed):
        found.fail("shards the manifest does not list", stray)
    _check_counts(manifest, train, held_out, _read_rejects(build_dir, found), found)
    return found.lines()


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="re-check a finished build: files, every document's mask, the counts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build", metavar="OUT", help="a build folder (sftdata build --out)")
    p.set_defaults(run=run)


def run(args) -> int:
    build_dir = Path(args.build)
    if not build_dir.is_dir():
        print(f"sftdata verify: {build_dir} is not a folder; give the --out folder of a build", file=sys.stderr)
        return 2
    failed = verify_build(build_dir)
    for line in failed:
        print(f"FAILED {line}")
    print(f"{build_dir}: {'checks failed' if failed else 'every check passed'}",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
